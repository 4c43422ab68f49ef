"""The GRPO run: on-policy steps through a Tinker training client, as DESIGN §2 lists them.

Each step:
  1. save the current weights and get a fresh sampling client,
  2. sample `group_size` responses for each question of the batch, all requests in flight,
  3. score every response,
  4. group-normalise rewards into advantages,
  5. build one Datum per response of a group with reward variance,
  6. forward_backward with the ppo loss and optim_step, submitted back to back,
  7. log; checkpoint every `save_every` steps; validate every `eval_every` steps.

The loop never knows which backend it talks to: the service client is injected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tinker
import torch

from harness.checkpoints import last_checkpoint, save_checkpoint
from harness.config import Config
from harness.data import BatchCursor, Problem, next_batch
from harness.datums import step_datums
from harness.evaluation import (
    Question,
    RewardFn,
    Sampling,
    evaluate,
    validation_metrics,
    validation_subset,
)
from harness.grpo import constant_groups, group_normalized_advantages
from harness.logger import STEP_KEY, RunLogger
from harness.metrics import length_metrics, policy_metrics, reward_metrics
from harness.prompts import format_prompt
from harness.rewards import make_reward_fn
from harness.rollouts import (
    encode_prompts,
    request_seed,
    response_arrays,
    sample_groups,
    stop_sequences,
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


@dataclasses.dataclass(frozen=True)
class RunResult:
    steps_run: int
    resumed_from: int
    final_metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Scored:
    """A step's rollouts in (problem, group member) layout."""

    tokens_P_G: list[list[np.ndarray]]
    logprobs_P_G: list[list[np.ndarray]]
    rewards_P_G: np.ndarray
    format_P_G: np.ndarray
    answer_P_G: np.ndarray
    truncated_P_G: np.ndarray


def train(
    config: Config,
    service_client: Any,
    train_problems: Sequence[Problem],
    test_problems: Sequence[Problem],
    logger: RunLogger,
    reward_fn: RewardFn | None = None,
) -> RunResult:
    """Run (or resume) GRPO until `n_grpo_steps` steps are done; validate at the end."""
    reward_fn = reward_fn or make_reward_fn(config.use_r1_zero_format)
    training_client, start_step, cursor = start_or_resume(service_client, config, logger)
    tokenizer = training_client.get_tokenizer()
    val_indices = validation_subset(len(test_problems), config.eval_n, config.seed)
    val_questions = [(i, test_problems[i]) for i in val_indices]

    for step in range(start_step, config.n_grpo_steps):
        batch_indices, cursor = next_batch(
            cursor, len(train_problems), config.rollout_batch_size, config.seed
        )
        problems_P = [train_problems[i] for i in batch_indices]
        row = grpo_step(
            step, config, training_client, tokenizer, problems_P, reward_fn, logger,
            val_questions=val_questions if step % config.eval_every == 0 else None,
        )  # fmt: skip
        logger.log(row)
        done = step + 1
        if done % config.save_every == 0 or done == config.n_grpo_steps:
            save_checkpoint(training_client, config.log_path, done, cursor, config.seed)

    final_row = final_validation(config, training_client, tokenizer, val_questions, logger)
    logger.log(final_row)
    return RunResult(
        steps_run=config.n_grpo_steps - start_step, resumed_from=start_step, final_metrics=final_row
    )


def start_or_resume(
    service_client: Any, config: Config, logger: RunLogger
) -> tuple[Any, int, BatchCursor]:
    """A fresh LoRA training client, or the one the last checkpoint saved, with its optimizer."""
    checkpoint = last_checkpoint(config.log_path)
    if checkpoint is None:
        logger.drop_rows_from(0)
        training_client = service_client.create_lora_training_client(
            base_model=config.model_name, rank=config.lora_rank, seed=config.seed
        ).result()
        return training_client, 0, BatchCursor()
    logger.drop_rows_from(checkpoint.step)
    training_client = service_client.create_training_client_from_state_with_optimizer(
        checkpoint.state_path
    ).result()
    return training_client, checkpoint.step, checkpoint.cursor


def grpo_step(
    step: int,
    config: Config,
    training_client: Any,
    tokenizer: Any,
    problems_P: Sequence[Problem],
    reward_fn: RewardFn,
    logger: RunLogger,
    val_questions: Sequence[Question] | None,
) -> dict[str, float]:
    timer = Timer(TIME_KEYS)
    metrics: dict[str, float] = {}
    with timer("time/save_weights"):
        sampling_client = training_client.save_weights_and_get_sampling_client().result()
    if val_questions is not None:
        with timer("time/validation"):
            metrics |= validate(step, config, sampling_client, tokenizer, val_questions, logger)

    prompt_tokens_P = encode_prompts(
        tokenizer, [format_prompt(p.question, config.use_r1_zero_format) for p in problems_P]
    )
    with timer("time/sampling"):
        responses_P = sample_groups(
            sampling_client,
            prompt_tokens_P,
            config.group_size,
            rollout_params(config, tokenizer, step, len(problems_P)),
            collect=logger.collect,
        )
    with timer("time/compute_rewards"):
        scored = score(responses_P, problems_P, tokenizer, reward_fn)
    with timer("time/build_data"):
        rewards_P_G = torch.from_numpy(scored.rewards_P_G)
        advantages_P_G = group_normalized_advantages(
            rewards_P_G, config.advantage_eps, config.use_std_normalization
        ).numpy()
        datums_D, origins_D = step_datums(
            [p.to_ints() for p in prompt_tokens_P],
            scored.tokens_P_G,
            scored.logprobs_P_G,
            advantages_P_G,
        )
    trained = None
    if datums_D:
        with timer("time/training"):
            trained = train_on(training_client, datums_D, config)
    else:
        logger.warn(f"step {step}: no group had reward variance; training skipped")

    metrics |= {
        STEP_KEY: float(step),
        "progress/done_frac": (step + 1) / config.n_grpo_steps,
        **reward_metrics(scored.rewards_P_G, scored.format_P_G, scored.answer_P_G),
        **length_metrics(
            np.array([[len(t) for t in tokens_G] for tokens_G in scored.tokens_P_G]),
            scored.truncated_P_G,
        ),
        "train/frac_zero_variance_groups": constant_groups(rewards_P_G).float().mean().item(),
        "train/datums": float(len(datums_D)),
        **timer.totals(),
    }
    if trained is not None:
        metrics |= training_metrics(*trained, scored, origins_D, advantages_P_G, config.cliprange)
    return metrics


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
        [reward_fn(text, problem.answer) for text in texts_G]
        for texts_G, problem in zip(texts_P_G, problems_P, strict=True)
    ]

    def table(key: str) -> np.ndarray:
        return np.array([[r[key] for r in rewards_G] for rewards_G in rewards], dtype=np.float32)

    return Scored(
        tokens_P_G=tokens_P_G,
        logprobs_P_G=logprobs_P_G,
        rewards_P_G=table("reward"),
        format_P_G=table("format_reward"),
        answer_P_G=table("answer_reward"),
        truncated_P_G=np.array(
            [[s.stop_reason == "length" for s in r.sequences] for r in responses_P]
        ),
    )


def train_on(
    training_client: Any, datums_D: list[tinker.Datum], config: Config
) -> tuple[tinker.ForwardBackwardOutput, tinker.OptimStepResponse]:
    """forward_backward (ppo) then optim_step, both submitted before waiting on either."""
    fb_future = training_client.forward_backward(
        datums_D,
        loss_fn="ppo",
        loss_fn_config={
            "clip_low_threshold": 1 - config.cliprange,
            "clip_high_threshold": 1 + config.cliprange,
        },
    )
    optim_future = training_client.optim_step(tinker.AdamParams(learning_rate=config.learning_rate))
    return fb_future.result(), optim_future.result()


def training_metrics(
    fb: tinker.ForwardBackwardOutput,
    optim: tinker.OptimStepResponse,
    scored: Scored,
    origins_D: Sequence[tuple[int, int]],
    advantages_P_G: np.ndarray,
    cliprange: float,
) -> dict[str, float]:
    """The loss, the optimizer's report, and sampler-vs-trainer logprobs on response tokens."""
    sampler_logprobs_D = [scored.logprobs_P_G[p][g] for p, g in origins_D]
    trainer_logprobs_D = [
        output["logprobs"].to_numpy()[-len(sampler) :]
        for output, sampler in zip(fb.loss_fn_outputs, sampler_logprobs_D, strict=True)
    ]
    return {
        "train/loss": float(fb.metrics["loss:sum"]),
        **{f"optim/{key.split(':')[0]}": float(v) for key, v in (optim.metrics or {}).items()},
        **policy_metrics(
            sampler_logprobs_D,
            trainer_logprobs_D,
            [float(advantages_P_G[p, g]) for p, g in origins_D],
            cliprange,
        ),
    }


def validate(
    step: int,
    config: Config,
    sampling_client: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    logger: RunLogger,
) -> dict[str, float]:
    """Accuracy (greedy by default) under the task's own reward, whatever reward the training
    uses."""
    sampling = Sampling(
        max_tokens=config.sampling_max_tokens,
        num_samples=config.eval_num_samples,
        temperature=config.eval_temperature,
        seed=config.seed,
        step=step,
    )
    records = evaluate(
        sampling_client,
        tokenizer,
        questions,
        make_reward_fn(config.use_r1_zero_format),
        config.use_r1_zero_format,
        sampling,
        collect=logger.collect,
    )
    logger.write_eval_samples(step, records)
    return validation_metrics(records)


def final_validation(
    config: Config,
    training_client: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    logger: RunLogger,
) -> dict[str, float]:
    """Validation of the final weights, logged as the row of step `n_grpo_steps`."""
    timer = Timer(("time/save_weights", "time/validation"))
    with timer("time/save_weights"):
        sampling_client = training_client.save_weights_and_get_sampling_client().result()
    with timer("time/validation"):
        metrics = validate(
            config.n_grpo_steps, config, sampling_client, tokenizer, questions, logger
        )
    return {
        STEP_KEY: float(config.n_grpo_steps),
        "progress/done_frac": 1.0,
        **metrics,
        **timer.totals(),
    }
