"""The GRPO run: on-policy steps through a Tinker training client, as docs/DESIGN.md §2 lists them.

Each step:
  1. save the current weights and get a fresh sampling client,
  2. sample `group_size` responses for each question of the batch, all requests in flight,
  3. score every response,
  4. group-normalise rewards into advantages (the harness's function, or a student's),
  5. build one Datum per response of a group with reward variance,
  6. forward_backward with the loss type's Tinker loss and optim_step, submitted back to back
     (once per minibatch and epoch when several optimizer steps share a rollout batch),
  7. log; checkpoint every `save_every` steps; validate every `eval_every` steps.

With one optimizer step per rollout batch, steps 3-6 stream by default
(`stream_forward_backward`): each group is scored as its samples arrive and its Datums go to
forward_backward in requests of `stream_request_tokens`, the one optim_step after the last, and
validation samples while that last request trains; `--stream_training=False`, or several
optimizer steps per rollout batch, runs them one after another (`serial_training`).

The loop never knows which backend it talks to: the service client is injected.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tinker
import torch
from tinker.lib.chunked_fwdbwd_helpers import combine_fwd_bwd_output_results

from harness.checkpoints import (
    RunStateError,
    index_path,
    resume_points,
    save_checkpoint,
    save_rolling,
    unloadable,
)
from harness.config import Config
from harness.cost import (
    Price,
    Tokens,
    load_price_table,
    sampling_tokens,
    training_tokens,
    usage_metrics,
)
from harness.data import BatchCursor, Problem, next_batch
from harness.datums import step_datums
from harness.evaluation import (
    PendingEvaluation,
    Question,
    Sampling,
    submit_evaluation,
    validation_metrics,
    validation_subset,
)
from harness.grpo import compute_group_normalized_rewards, zero_variance_groups
from harness.logger import STEP_KEY, RunLogger
from harness.metrics import length_metrics, policy_metrics, reward_metrics
from harness.objectives import TinkerLoss, optimizer_steps, tinker_loss, training_signal
from harness.plugins import AdvantagesFn, checked_advantages
from harness.prompts import format_prompt
from harness.resilience import FaultLog, RetryPolicy, RunFailed, TrainingFault, Waits
from harness.rewards import RewardFn, make_reward_fn
from harness.rollouts import (
    encode_prompts,
    request_seed,
    response_arrays,
    stop_sequences,
    submit_groups,
)
from harness.timing import Timer

TIME_KEYS = (
    "time/save_weights",
    "time/validation",
    "time/sampling",
    "time/compute_rewards",
    "time/build_data",
    "time/training",
)


ScoresHook = Callable[[int, np.ndarray, np.ndarray], None]


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """What scores rollouts (training, validation), turns rewards into advantages, and is
    shown each step's rewards and advantages."""

    reward_fn: RewardFn
    eval_reward_fn: RewardFn
    advantages_fn: AdvantagesFn
    on_scores: ScoresHook | None


@dataclasses.dataclass(frozen=True)
class RunResult:
    steps_run: int
    resumed_from: int
    final_metrics: dict[str, float]
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    """Faults met and recovered from in process, by kind (`faults/*` in the metrics rows)."""


@dataclasses.dataclass(frozen=True)
class Scored:
    """A step's rollouts in (problem, group member) layout."""

    tokens_P_G: list[list[np.ndarray]]
    logprobs_P_G: list[list[np.ndarray]]
    texts_P_G: list[list[str]]
    scores_P_G: list[list[dict[str, float]]]
    rewards_P_G: np.ndarray
    format_P_G: np.ndarray
    answer_P_G: np.ndarray
    truncated_P_G: np.ndarray


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """Rollouts scored, their (P, G) advantages, and the Datums built from them with the
    (problem, member) each came from."""

    scored: Scored
    advantages_P_G: np.ndarray
    signal_P_G: np.ndarray
    """What the Datums carry in the loss's input: the advantages, length-normalised, or the raw
    rewards for `no_baseline`."""
    datums_D: list[tinker.Datum]
    sources_D: list[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class OptimizerStep:
    """One optimizer step of a rollout batch: the Datums it trained on and the answers."""

    datums: list[int]
    forward_backward: tinker.ForwardBackwardOutput
    optim: tinker.OptimStepResponse


def train(
    config: Config,
    service_client: Any,
    train_problems: Sequence[Problem],
    test_problems: Sequence[Problem],
    logger: RunLogger,
    reward_fn: RewardFn | None = None,
    *,
    prices: Mapping[str, Price] | None = None,
    eval_reward_fn: RewardFn | None = None,
    advantages_fn: AdvantagesFn = compute_group_normalized_rewards,
    on_scores: ScoresHook | None = None,
) -> RunResult:
    """Run (or resume) GRPO until `n_grpo_steps` steps are done; validate at the end.

    `reward_fn` scores training rollouts and `eval_reward_fn` validation (each the task's
    reward by default); `advantages_fn` has `compute_group_normalized_rewards`'s signature;
    `on_scores(step, rewards_P_G, advantages_P_G)` sees each step's (a recording keeps them).
    `prices` defaults to `--price_table` (or the shipped table); tokens are counted either way.
    """
    functions = StepFunctions(
        reward_fn=reward_fn or make_reward_fn(config.use_r1_zero_format),
        eval_reward_fn=eval_reward_fn or make_reward_fn(config.use_r1_zero_format),
        advantages_fn=advantages_fn,
        on_scores=on_scores,
    )
    price = (load_price_table(config.price_table) if prices is None else prices).get(
        config.model_name
    )
    if price is None:
        logger.warn(
            f"no price for {config.model_name} in the price table: logging tokens, not dollars "
            "(--price_table=FILE adds one)"
        )
    waits = Waits(
        RetryPolicy(config.request_timeout_s, config.request_attempts, config.retry_backoff_s),
        FaultLog(logger.warn),
    )
    training_client, step, cursor, totals = start_or_resume(service_client, config, logger, waits)
    start_step = step
    release = checkpoint_release(service_client, waits)
    tokenizer = training_client.get_tokenizer()
    val_indices = validation_subset(len(test_problems), config.eval_n, config.seed)
    val_questions = [(i, test_problems[i]) for i in val_indices]

    # `furthest`: steps done before any redo (their saves may exist); `failures`: per step.
    furthest, failures = step, collections.Counter[int]()
    while True:
        try:
            if step == config.n_grpo_steps:
                final_row, tokens = final_validation(
                    config, training_client, tokenizer, val_questions, functions.eval_reward_fn,
                    logger, waits,
                )  # fmt: skip
                break
            batch_indices, next_cursor = next_batch(
                cursor, len(train_problems), config.rollout_batch_size, config.seed
            )
            problems_P = [train_problems[i] for i in batch_indices]
            row, tokens = grpo_step(
                step, config, training_client, tokenizer, problems_P, functions, logger, waits,
                val_questions=val_questions if step % config.eval_every == 0 else None,
            )  # fmt: skip
            done, next_totals = step + 1, totals + tokens
            logger.log(row | usage_metrics(tokens, next_totals, price) | waits.faults.take())
            save(training_client, config, done, next_cursor, next_totals, waits, furthest, release)
        except TrainingFault as fault:
            failures[step] += 1
            if failures[step] >= config.request_attempts:
                raise RunFailed(
                    f"step {step}: {fault}, {failures[step]} times (--request_attempts)",
                    during_training=True,
                ) from fault
            waits.faults.record(
                "training_redos", f"step {step}: {fault}; redoing from the last saved state"
            )
            training_client, step, cursor, totals = start_or_resume(
                service_client, config, logger, waits
            )
            continue
        except RunFailed as failure:
            if not failure.during_training:  # the weights are those after `step` steps
                with contextlib.suppress(RunFailed, TrainingFault):
                    save_rolling(training_client, config.log_path, step, cursor, config.seed,
                                 totals, wait=waits.training)  # fmt: skip
            raise
        furthest = max(furthest, done)
        step, cursor, totals = done, next_cursor, next_totals

    totals += tokens
    final_row |= usage_metrics(tokens, totals, price) | waits.faults.take()
    logger.log(final_row)
    return RunResult(
        steps_run=config.n_grpo_steps - start_step,
        resumed_from=start_step,
        final_metrics=final_row,
        faults=dict(waits.faults.total),
    )


def save(
    training_client: Any,
    config: Config,
    done: int,
    cursor: BatchCursor,
    totals: Tokens,
    waits: Waits,
    furthest: int,
    release: Callable[[str], None] | None,
) -> None:
    """After `done` steps: a checkpoint every `save_every` and at the end (kept for good), else
    a rolling save every `rolling_save_every`. A save of a redone step replaces its first."""
    if done % config.save_every == 0 or done == config.n_grpo_steps:
        ttl_seconds = None if done == config.n_grpo_steps else config.ttl_seconds
        save_checkpoint(
            training_client, config.log_path, done, cursor, config.seed, totals,
            wait=waits.training, ttl_seconds=ttl_seconds, overwrite=done <= furthest,
        )  # fmt: skip
    elif config.rolling_save_every and done % config.rolling_save_every == 0:
        save_rolling(
            training_client, config.log_path, done, cursor, config.seed, totals,
            wait=waits.training, release=release,
        )  # fmt: skip


def checkpoint_release(service_client: Any, waits: Waits) -> Callable[[str], None] | None:
    """Deletes a checkpoint by its tinker path through the SDK's REST client (the cloud, the
    local server); None for the in-process backends and recorded runs, whose clients have no
    REST surface to record: their rolling saves are left to the one-hour TTL."""
    if not isinstance(service_client, tinker.ServiceClient):
        return None
    with warnings.catch_warnings():
        # Deprecated in favour of tinker.RestClient(base_url, api_key), which the loop cannot
        # build: the service client alone knows them (a local server makes its own key).
        warnings.simplefilter("ignore", FutureWarning)
        rest_client = service_client.create_rest_client()
    return lambda path: waits.training(
        rest_client.delete_checkpoint_from_tinker_path(path), f"deleting {path}"
    )


def start_or_resume(
    service_client: Any, config: Config, logger: RunLogger, waits: Waits
) -> tuple[Any, int, BatchCursor, Tokens]:
    """A fresh LoRA training client, or the newest saved state (checkpoint or rolling save)
    that still loads, with its optimizer (and the step, data cursor and token totals to go on
    from). Rows logged after that state are dropped only once it has loaded."""
    saved = resume_points(config.log_path)
    if not saved:
        logger.drop_rows_from(0)
        training_client = waits.resendable(
            lambda: service_client.create_lora_training_client(
                base_model=config.model_name, rank=config.lora_rank, seed=config.seed
            ),
            "create_lora_training_client",
            "service_resends",
        ).result()
        return training_client, 0, BatchCursor(), Tokens()
    for checkpoint in reversed(saved):
        try:
            training_client = waits.resendable(
                lambda path=checkpoint.state_path: (
                    service_client.create_training_client_from_state_with_optimizer(path)
                ),
                f"loading {checkpoint.state_path}",
                "service_resends",
            ).result()
        except RunFailed as failure:
            error = failure.__cause__
            if error is None or not unloadable(error):
                raise
            logger.warn(
                f"the checkpoint of step {checkpoint.step} ({checkpoint.state_path}) does not"
                f" load ({error}); trying the one before it"
            )
            continue
        logger.drop_rows_from(checkpoint.step)
        return training_client, checkpoint.step, checkpoint.cursor, checkpoint.tokens
    raise RunStateError(
        f"none of the {len(saved)} saved states in {index_path(config.log_path).parent} loads"
        " (expired or deleted); move that folder away to start the run over"
    )


def grpo_step(
    step: int,
    config: Config,
    training_client: Any,
    tokenizer: Any,
    problems_P: Sequence[Problem],
    functions: StepFunctions,
    logger: RunLogger,
    waits: Waits,
    val_questions: Sequence[Question] | None,
) -> tuple[dict[str, float], Tokens]:
    """The step's metrics, and the tokens of every request it made."""
    timer = Timer(TIME_KEYS)
    metrics: dict[str, float] = {}
    tokens = Tokens()
    with timer("time/save_weights"):
        sampling_client = waits.training(
            training_client.save_weights_and_get_sampling_client(),
            "save_weights_and_get_sampling_client",
        )
    streamed = streams(config)
    if val_questions is not None and not streamed:
        with timer("time/validation"):
            validation = submit_validation(
                step, config, sampling_client, tokenizer, val_questions, waits
            )
            metrics, tokens = finish_validation(step, validation, functions.eval_reward_fn, logger)

    prompt_tokens_P = encode_prompts(
        tokenizer, [format_prompt(p.question, config.prompt_name) for p in problems_P]
    )
    requests_P = submit_groups(
        sampling_client,
        prompt_tokens_P,
        config.group_size,
        rollout_params(config, tokenizer, step, len(problems_P)),
        purpose="rollout",
        waits=waits,
    )
    if streamed:
        rollouts, submitted = stream_forward_backward(
            step, requests_P, problems_P, prompt_tokens_P, training_client, tokenizer,
            functions, config, timer, logger,
        )  # fmt: skip
        validation = None
        if val_questions is not None:  # while the step's last training cycle runs
            validation = submit_validation(
                step, config, sampling_client, tokenizer, val_questions, waits
            )
        trained = None
        if submitted is not None:
            with timer("time/training"):
                trained = finished_training(*submitted, waits)
        if validation is not None:
            with timer("time/validation"):
                val_metrics, val_tokens = finish_validation(
                    step, validation, functions.eval_reward_fn, logger
                )
            metrics |= val_metrics
            tokens += val_tokens
    else:
        rollouts, trained = serial_training(
            step, requests_P, problems_P, prompt_tokens_P, training_client, tokenizer,
            functions, config, waits, timer, logger,
        )  # fmt: skip
    scored, datums_D = rollouts.scored, rollouts.datums_D
    tokens += sampling_tokens(prompt_tokens_P, [r.result() for r in requests_P])
    for optimizer_step in trained or []:  # every Datum sent, as often as it is sent
        tokens += training_tokens(datums_D[d] for d in optimizer_step.datums)
    if not datums_D:
        what = (
            "rollout had a reward"
            if config.loss_type == "no_baseline"
            else "group had reward variance"
        )
        logger.warn(f"step {step}: no {what}; training skipped")

    metrics |= {
        STEP_KEY: float(step),
        "progress/done_frac": (step + 1) / config.n_grpo_steps,
        **rollout_metrics(scored),
        "train/datums": float(len(datums_D)),
        **timer.totals(),
    }
    if trained is not None:
        metrics |= training_metrics(
            trained, scored, rollouts.sources_D, rollouts.signal_P_G, config
        )
    return metrics, tokens


def streams(config: Config) -> bool:
    """Whether the step streams its Datums to training as groups are scored: asked for, and
    exact, since one optimizer step follows them all (with several, each minibatch must wait
    for the whole batch's advantages and the step before it)."""
    return config.stream_training and config.optimizer_steps_per_rollout_batch == 1


def rollout_metrics(scored: Scored) -> dict[str, float]:
    """A step's statistics of its rollouts: rewards, lengths, groups without reward variance."""
    zero_variance_P = zero_variance_groups(torch.from_numpy(scored.rewards_P_G))
    return {
        **reward_metrics(scored.rewards_P_G, scored.format_P_G, scored.answer_P_G),
        **length_metrics(response_lengths(scored), scored.truncated_P_G),
        "train/frac_zero_variance_groups": zero_variance_P.float().mean().item(),
    }


def response_lengths(scored: Scored) -> np.ndarray:
    """Sampled tokens per response, (P, G)."""
    return np.array([[len(t) for t in tokens_G] for tokens_G in scored.tokens_P_G])


def serial_training(
    step: int,
    requests_P: Sequence[Any],
    problems_P: Sequence[Problem],
    prompt_tokens_P: Sequence[tinker.ModelInput],
    training_client: Any,
    tokenizer: Any,
    functions: StepFunctions,
    config: Config,
    waits: Waits,
    timer: Timer,
    logger: RunLogger,
) -> tuple[Rollouts, list[OptimizerStep] | None]:
    """Every response, then every score, then each optimizer step of the schedule."""
    with timer("time/sampling"):
        responses_P = logger.collect(requests_P, "sampling")
    rollouts = prepare(
        responses_P, problems_P, prompt_tokens_P, tokenizer, functions, config, timer
    )
    show_scores(step, rollouts, functions)
    if not rollouts.datums_D:
        return rollouts, None
    schedule = optimizer_steps(
        rollouts.sources_D, config.group_size, config.minibatch_size,
        config.epochs_per_rollout_batch,
    )  # fmt: skip
    loss = tinker_loss(config.loss_type, config.cliprange)
    with timer("time/training"):
        return rollouts, train_on(training_client, rollouts.datums_D, schedule, loss, config, waits)


def stream_forward_backward(
    step: int,
    requests_P: Sequence[Any],
    problems_P: Sequence[Problem],
    prompt_tokens_P: Sequence[tinker.ModelInput],
    training_client: Any,
    tokenizer: Any,
    functions: StepFunctions,
    config: Config,
    timer: Timer,
    logger: RunLogger,
) -> tuple[Rollouts, tuple[int, list[Any], Any] | None]:
    """Each group scored as its samples arrive (in question order, so requests are the same
    whatever the timing), its Datums sent to forward_backward in requests of at least
    `stream_request_tokens` tokens, and the step's one optim_step right after the last (in
    its cycle): exactly the serial step's update, as gradients add up until optim_step.
    The rollouts, and the training requests in flight (None: nothing to train on)."""
    loss = tinker_loss(config.loss_type, config.cliprange)
    parts: list[Rollouts] = []
    pending: list[tinker.Datum] = []
    fb_futures: list[Any] = []
    pending_tokens = 0
    waiting = 0  # groups scored whose Datums are not sent yet
    n_problems = len(requests_P)
    with logger.progress({"sampling": n_problems, "training": n_problems}) as advance:
        for p, request in enumerate(requests_P):
            with timer("time/sampling"):
                response = request.result()
            advance("sampling")
            group = prepare(
                [response], problems_P[p : p + 1], prompt_tokens_P[p : p + 1], tokenizer,
                functions, config, timer,
            )  # fmt: skip
            parts.append(group)
            pending += group.datums_D
            pending_tokens += request_tokens(group.datums_D)
            waiting += 1
            last = p == n_problems - 1
            if last:
                rollouts = joined(parts)
                show_scores(step, rollouts, functions)
            if pending and (last or pending_tokens >= config.stream_request_tokens):
                with timer("time/training"):
                    fb_futures.append(submit_forward_backward(training_client, pending, loss))
                pending, pending_tokens = [], 0
            if not pending:  # every group so far is sent (or had nothing to send)
                advance("training", waiting)
                waiting = 0
    if not fb_futures:
        return rollouts, None
    with timer("time/training"):
        optim_future = training_client.optim_step(
            tinker.AdamParams(learning_rate=config.learning_rate)
        )
    return rollouts, (len(rollouts.datums_D), fb_futures, optim_future)


def finished_training(
    n_datums: int, fb_futures: list[Any], optim_future: Any, waits: Waits
) -> list[OptimizerStep]:
    """A streamed step's one optimizer step: the answers of its forward_backward requests
    (combined as the SDK combines a chunked one's, in the Datums' order) and of its optim_step."""
    outputs = [waits.training(future, "forward_backward") for future in fb_futures]
    return [
        OptimizerStep(
            list(range(n_datums)),
            combine_fwd_bwd_output_results(outputs),
            waits.training(optim_future, "optim_step"),
        )
    ]


def request_tokens(datums_D: Sequence[tinker.Datum]) -> int:
    """Model-input tokens of a forward_backward request: the work it brings a clock cycle."""
    return sum(datum.model_input.length for datum in datums_D)


def prepare(
    responses_P: Sequence[tinker.SampleResponse],
    problems_P: Sequence[Problem],
    prompt_tokens_P: Sequence[tinker.ModelInput],
    tokenizer: Any,
    functions: StepFunctions,
    config: Config,
    timer: Timer,
) -> Rollouts:
    """Responses scored, their group advantages, the loss type's signal, and their Datums."""
    with timer("time/compute_rewards"):
        scored = score(responses_P, problems_P, tokenizer, functions.reward_fn)
    with timer("time/build_data"):
        advantages_P_G = group_advantages(functions.advantages_fn, scored, problems_P, config)
        signal_P_G = training_signal(
            config.loss_type,
            advantages_P_G,
            scored.rewards_P_G,
            response_lengths(scored),
            config.length_normalization,
            config.sampling_max_tokens,
        )
        datums_D, sources_D = step_datums(
            [p.to_ints() for p in prompt_tokens_P],
            scored.tokens_P_G,
            scored.logprobs_P_G,
            signal_P_G,
            tinker_loss(config.loss_type, config.cliprange).signal_input,
        )
    return Rollouts(scored, advantages_P_G, signal_P_G, datums_D, sources_D)


def joined(parts: Sequence[Rollouts]) -> Rollouts:
    """Consecutive problems' rollouts as one step's (origins renumbered)."""
    offsets = np.cumsum([0] + [len(part.scored.tokens_P_G) for part in parts])
    scored = Scored(
        **{
            field.name: _concatenated([getattr(part.scored, field.name) for part in parts])
            for field in dataclasses.fields(Scored)
        }
    )
    return Rollouts(
        scored=scored,
        advantages_P_G=np.concatenate([part.advantages_P_G for part in parts]),
        signal_P_G=np.concatenate([part.signal_P_G for part in parts]),
        datums_D=[datum for part in parts for datum in part.datums_D],
        sources_D=[
            (int(offset) + p, g)
            for part, offset in zip(parts, offsets, strict=False)
            for p, g in part.sources_D
        ],
    )


def _concatenated(values: Sequence[Any]) -> Any:
    if isinstance(values[0], np.ndarray):
        return np.concatenate(values)
    return [item for value in values for item in value]


def show_scores(step: int, rollouts: Rollouts, functions: StepFunctions) -> None:
    """The step's rewards and advantages to `on_scores` (a recording keeps them)."""
    if functions.on_scores is not None:
        functions.on_scores(step, rollouts.scored.rewards_P_G, rollouts.advantages_P_G)


def rollout_params(
    config: Config, tokenizer: Any, step: int, n_problems: int
) -> list[tinker.SamplingParams]:
    stop = stop_sequences(tokenizer, config.use_r1_zero_format)
    return [
        tinker.SamplingParams(
            max_tokens=config.sampling_max_tokens,
            temperature=config.sampling_temperature,
            stop=stop,
            seed=request_seed(config.seed, step, i),
        )
        for i in range(n_problems)
    ]


def score(
    responses_P: Sequence[tinker.SampleResponse],
    problems_P: Sequence[Problem],
    tokenizer: Any,
    reward_fn: RewardFn,
) -> Scored:
    arrays_P_G = [[response_arrays(s) for s in r.sequences] for r in responses_P]
    tokens_P_G = [[tokens for tokens, _ in arrays_G] for arrays_G in arrays_P_G]
    logprobs_P_G = [[logprobs for _, logprobs in arrays_G] for arrays_G in arrays_P_G]
    texts_P_G = [
        tokenizer.batch_decode(tokens_G, skip_special_tokens=True) for tokens_G in tokens_P_G
    ]
    rewards = [
        [reward_fn(text, problem.ground_truth) for text in texts_G]
        for texts_G, problem in zip(texts_P_G, problems_P, strict=True)
    ]

    def table(key: str) -> np.ndarray:
        return np.array([[r[key] for r in rewards_G] for rewards_G in rewards], dtype=np.float32)

    return Scored(
        tokens_P_G=tokens_P_G,
        logprobs_P_G=logprobs_P_G,
        texts_P_G=texts_P_G,
        scores_P_G=rewards,
        rewards_P_G=table("reward"),
        format_P_G=table("format_reward"),
        answer_P_G=table("answer_reward"),
        truncated_P_G=np.array(
            [[s.stop_reason == "length" for s in r.sequences] for r in responses_P]
        ),
    )


def group_advantages(
    advantages_fn: AdvantagesFn, scored: Scored, problems_P: Sequence[Problem], config: Config
) -> np.ndarray:
    """(P, G) advantages from `advantages_fn` on the step's responses, as CS336's
    `compute_group_normalized_rewards` computes them; it reads the rewards already scored, so
    the reward function runs once per response. Groups whose rewards are all equal get zero."""
    scores = {
        (text, problem.ground_truth): score
        for texts_G, scores_G, problem in zip(
            scored.texts_P_G, scored.scores_P_G, problems_P, strict=True
        )
        for text, score in zip(texts_G, scores_G, strict=True)
    }
    result = advantages_fn(
        lambda response, ground_truth: scores[response, ground_truth],
        [text for texts_G in scored.texts_P_G for text in texts_G],
        [problem.ground_truth for problem in problems_P for _ in range(config.group_size)],
        config.group_size,
        config.advantage_eps,
        config.use_std_normalization,
    )
    name = getattr(advantages_fn, "__qualname__", "the advantages function")
    return checked_advantages(name, result, scored.rewards_P_G)[0]


def train_on(
    training_client: Any,
    datums_D: list[tinker.Datum],
    schedule: Sequence[list[int]],
    loss: TinkerLoss,
    config: Config,
    waits: Waits,
) -> list[OptimizerStep]:
    """Each optimizer step of the schedule (the Datums of a minibatch, epoch after epoch):
    forward_backward with the loss, then optim_step; every request submitted before waiting on
    any, so the service runs them in order and each forward_backward sees the weights the
    steps before it made."""
    submitted = [
        (
            indices,
            submit_forward_backward(training_client, [datums_D[d] for d in indices], loss),
            training_client.optim_step(tinker.AdamParams(learning_rate=config.learning_rate)),
        )
        for indices in schedule
    ]
    return [
        OptimizerStep(
            indices,
            waits.training(fb_future, "forward_backward"),
            waits.training(optim_future, "optim_step"),
        )
        for indices, fb_future, optim_future in submitted
    ]


def submit_forward_backward(
    training_client: Any, datums_D: list[tinker.Datum], loss: TinkerLoss
) -> Any:
    """forward_backward with the loss type's Tinker loss, not waited for."""
    return training_client.forward_backward(
        datums_D, loss_fn=loss.loss_fn, loss_fn_config=loss.loss_fn_config
    )


def training_metrics(
    steps: Sequence[OptimizerStep],
    scored: Scored,
    sources_D: Sequence[tuple[int, int]],
    signal_P_G: np.ndarray,
    config: Config,
) -> dict[str, float]:
    """The loss, the optimizer's report, and sampler-vs-trainer logprobs on response tokens
    before each step: over the rollout batch's steps (their mean loss, the last optimizer
    report, the tokens of them all), and with several steps, each one's as `optim_step/{i}/*`."""
    per_step = [step_tokens(step, scored, sources_D, signal_P_G) for step in steps]
    together = [list(itertools.chain(*parts)) for parts in zip(*per_step, strict=True)]
    losses = [float(step.forward_backward.metrics["loss:sum"]) for step in steps]
    optim = steps[-1].optim.metrics or {}
    metrics = {
        "train/loss": float(np.mean(losses)),
        **{f"optim/{key.split(':')[0]}": float(value) for key, value in optim.items()},
        **policy_metrics(*together, config.cliprange),
        # Each Datum's tokens once, however many epochs trained on them.
        "train/tokens": float(sum(len(scored.tokens_P_G[p][g]) for p, g in sources_D)),
    }
    if config.optimizer_steps_per_rollout_batch == 1:
        return metrics
    metrics["train/optim_steps"] = float(len(steps))
    for i, (loss, tokens) in enumerate(zip(losses, per_step, strict=True)):
        policy = policy_metrics(*tokens, config.cliprange)
        metrics[f"optim_step/{i}/loss"] = loss
        for key in PER_STEP_POLICY_KEYS:
            metrics[f"optim_step/{i}/{key}"] = policy[f"train/{key}"]
    return metrics


PER_STEP_POLICY_KEYS = ("kl_sampler_trainer", "ratio_min", "ratio_max", "clip_frac")


def step_tokens(
    step: OptimizerStep,
    scored: Scored,
    sources_D: Sequence[tuple[int, int]],
    signal_P_G: np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """One optimizer step's Datums as policy_metrics reads them: the sampler's and the
    trainer's (before the step) logprobs of their response tokens, and their signal."""
    sources = [sources_D[d] for d in step.datums]
    sampler_logprobs_D = [scored.logprobs_P_G[p][g] for p, g in sources]
    trainer_logprobs_D = [
        output["logprobs"].to_numpy()[-len(sampler) :]
        for output, sampler in zip(
            step.forward_backward.loss_fn_outputs, sampler_logprobs_D, strict=True
        )
    ]
    return sampler_logprobs_D, trainer_logprobs_D, [float(signal_P_G[p, g]) for p, g in sources]


def submit_validation(
    step: int,
    config: Config,
    sampling_client: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    waits: Waits,
) -> PendingEvaluation:
    """Validation's requests (greedy by default), in flight."""
    sampling = Sampling(
        max_tokens=config.sampling_max_tokens,
        num_samples=config.eval_num_samples,
        temperature=config.eval_temperature,
        seed=config.seed,
        step=step,
    )
    return submit_evaluation(
        sampling_client, tokenizer, questions, config.prompt_name, sampling, waits=waits
    )


def finish_validation(
    step: int, validation: PendingEvaluation, eval_reward_fn: RewardFn, logger: RunLogger
) -> tuple[dict[str, float], Tokens]:
    """Accuracy under the validation reward (the task's unless a flag plugs another), whatever
    reward the training uses; and the tokens its requests read and generated."""
    records = validation.records(eval_reward_fn, logger.collect)
    logger.write_eval_samples(step, records)
    return validation_metrics(records), Tokens(
        prefill=sum(r["prompt_tokens"] for r in records if r["sample"] == 0),  # one per request
        sampled=sum(r["response_tokens"] for r in records),
    )


def final_validation(
    config: Config,
    training_client: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    eval_reward_fn: RewardFn,
    logger: RunLogger,
    waits: Waits,
) -> tuple[dict[str, float], Tokens]:
    """Validation of the final weights, logged as the row of step `n_grpo_steps`."""
    timer = Timer(("time/save_weights", "time/validation"))
    with timer("time/save_weights"):
        sampling_client = waits.training(
            training_client.save_weights_and_get_sampling_client(),
            "save_weights_and_get_sampling_client",
        )
    with timer("time/validation"):
        validation = submit_validation(
            config.n_grpo_steps, config, sampling_client, tokenizer, questions, waits
        )
        metrics, tokens = finish_validation(config.n_grpo_steps, validation, eval_reward_fn, logger)
    row = {STEP_KEY: float(config.n_grpo_steps), "progress/done_frac": 1.0, **metrics}
    return row | timer.totals(), tokens
