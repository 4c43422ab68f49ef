"""A recorded run rebuilt from its cassette: each step's questions, responses, rewards, what was
trained, and the step's metrics, computed by the loop's own code.

The conventions come from their owners, never guessed: a resumed run's first step from the
checkpoint's name (`checkpoints.step_of`), each step's questions from the data order
(`data.cursor_at_step`, `next_batch`) and the recorded config, rollouts and validation apart by
the purpose the loop marked on each sample request (`purpose_of`), and the metrics from
`loop.rollout_metrics`, `loop.training_metrics` and `evaluation.validation_metrics` on the
recorded responses, so a step's row is the row the run logged (timings aside).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
from tinker import types
from tinker.lib.chunked_fwdbwd_helpers import combine_fwd_bwd_output_results

from harness.backends.cassette import Call, Cassette, read_cassette, recorded_flags
from harness.backends.cassette_codec import decode
from harness.backends.replay_service import load_tokenizer, recorded_reward_fn
from harness.checkpoints import step_of
from harness.config import Config, ConfigError, config_from_record
from harness.data import DatasetUnavailable, Problem, cursor_at_step, load_problems, next_batch
from harness.evaluation import Question, answer_records, validation_metrics, validation_subset
from harness.loop import OptimizerStep, rollout_metrics, score, training_metrics
from harness.metrics import length_metrics
from harness.objectives import SignalInput
from harness.plugins import load_function
from harness.prompts import PromptName, effective_prompt, format_prompt
from harness.rewards import RewardFn, make_reward_fn
from harness.rollouts import Purpose, encode_prompts, response_arrays

# The call that starts each step, and the final validation: the loop's step 1.
STEP_START = "save_weights_and_get_sampling_client"


@dataclasses.dataclass
class Rollout:
    """One sampled response with what the run made of it."""

    tokens: np.ndarray
    logprobs: np.ndarray
    stop_reason: str
    text: str
    reward: dict[str, float] | None
    advantage: float | None = None
    trainer_logprobs: np.ndarray | None = None


@dataclasses.dataclass
class QuestionGroup:
    """One question's sample request and its responses."""

    call: Call
    prompt_tokens: list[int]
    problem: Problem | None
    prompt_matches: bool | None
    rollouts: list[Rollout]


@dataclasses.dataclass
class Step:
    number: int
    final: bool
    """The validation after the last step (no rollouts)."""
    groups: list[QuestionGroup]
    validation: list[dict[str, Any]]
    """The validation's answer records, as `evaluation.evaluate` gives them (empty if none)."""
    metrics: dict[str, float]
    """The step's row of metrics.jsonl as far as the cassette holds it (no timings, tokens or
    progress): rewards need the questions, `train/*` a recorded training call."""
    timings: dict[str, float]
    """Seconds per phase from the recorded latencies."""


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How the run read and scored responses."""

    tokenizer: Any
    reward_fn: RewardFn
    """The reward the run trained on (the recorded one)."""
    validation_reward: RewardFn
    """The reward validation used: the task's, or the recorded --eval_reward_fn."""
    use_r1_zero_format: bool
    prompt: PromptName


@dataclasses.dataclass
class RunView:
    cassette: Cassette
    config: dict[str, Any]
    steps: list[Step]
    notes: list[str]


def purpose_of(call: Call) -> Purpose:
    """What a sample call was for, as the loop marked it. A cassette recorded before the mark
    is read the way its loop sampled: rollouts seeded, validation greedy and unseeded."""
    if call.purpose is not None:
        return call.purpose  # type: ignore[return-value]
    return "rollout" if "seed" in call.request.get("sampling_params", {}) else "evaluation"


def load_view(
    path: str | Path, dataset_path: str | None, tokenizer: str | None, step: int | None = None
) -> RunView:
    """The run recorded in `path`; `dataset_path` and `tokenizer` stand in for a dataset and a
    tokenizer the recorded ones name but this machine cannot load. With `step`, of that step
    alone (a binary cassette's other steps are not read)."""
    if step is None:
        cassette = read_cassette(path, arrays_as_lists=False)
    else:
        # Every segment holds the setup calls, which say the first step: read as if the run
        # started at step 0, and again only if it was resumed from a later one.
        cassette = read_cassette(path, segment=step, arrays_as_lists=False)
        start = _start_step(cassette.calls)
        if start:
            cassette = read_cassette(path, segment=max(step - start, 0), arrays_as_lists=False)
    config = cassette.config
    notes: list[str] = []
    r1_zero = config.get("use_r1_zero_format", True)
    scoring = Scoring(
        tokenizer=load_tokenizer(_tokenizer_source(cassette), cassette, tokenizer),
        reward_fn=_reward(cassette, r1_zero, notes),
        validation_reward=_validation_reward(cassette, r1_zero, notes),
        use_r1_zero_format=r1_zero,
        prompt=effective_prompt(config.get("prompt"), r1_zero),
    )
    train_problems, test_problems = _problems(config, dataset_path, notes)
    start = _start_step(cassette.calls)
    batch_size, seed = config["rollout_batch_size"], config["seed"]
    cursor = None
    if train_problems is not None:
        cursor = cursor_at_step(start + cassette.first_segment, len(train_problems), batch_size)
    questions = None
    if test_problems is not None:
        indices = validation_subset(len(test_problems), config["eval_n"], seed)
        questions = [(i, test_problems[i]) for i in indices]
    steps = []
    for k, calls in enumerate(_segments(cassette.calls), start=cassette.first_segment):
        number = start + k
        batch = None
        if train_problems is not None and cursor is not None:
            indices, cursor = next_batch(cursor, len(train_problems), batch_size, seed)
            batch = [train_problems[i] for i in indices]
        final = number == config.get("n_grpo_steps")
        step = _step(number, final, calls, batch, questions, scoring, _run_config(cassette))
        steps.append(step)
        if any(g.prompt_matches is False for g in step.groups):
            notes.append(
                f"step {number}: prompts differ from the dataset's questions (another dataset?"
                " pass --dataset_path)"
            )
    return RunView(cassette, config, steps, notes)


def find_step(view: RunView, number: int) -> Step:
    for step in view.steps:
        if step.number == number and not step.final:
            return step
    recorded = [s.number for s in view.steps if not s.final]
    if view.cassette.segments is not None:  # read alone: the numbers the whole file holds
        start = _start_step(view.cassette.calls)  # the setup calls are always read
        recorded = list(range(start, start + view.cassette.segments))
        recorded = [n for n in recorded if n != view.config.get("n_grpo_steps")]
    raise ValueError(f"--step={number}: the cassette records steps {recorded}")


def replay_flags(view: RunView) -> list[str]:
    """The flags that replay this cassette."""
    return ["--backend=replay", f"--cassette={view.cassette.path}", *rerun_flags(view.config)]


def rerun_flags(config: dict[str, Any]) -> list[str]:
    """The recorded run's flags that are not defaults, but for where it ran and what it wrote
    (backend, log and cassette paths): the flags that run it again."""
    defaults = dataclasses.asdict(Config())
    skip = {"backend", "log_path", "record_cassette", "cassette", "replay_realtime", "base_url"}
    return [
        f"--{name}={value}"
        for name, value in config.items()
        if name not in skip and name in defaults and value != defaults[name]
    ]


# -- what the run used ----------------------------------------------------------------------------


def _tokenizer_source(cassette: Cassette) -> dict[str, str]:
    for call in cassette.calls:
        if call.method == "get_tokenizer" and isinstance(call.response, dict):
            return call.response["$tokenizer"]
    return {"name": str(cassette.header.get("model"))}


def _problems(
    config: dict[str, Any], dataset_path: str | None, notes: list[str]
) -> tuple[list[Problem] | None, list[Problem] | None]:
    path = dataset_path or config.get("dataset_path")
    try:
        dataset = config.get("dataset", "gsm8k")
        return load_problems(dataset, "train", path), load_problems(dataset, "test", path)
    except (DatasetUnavailable, OSError, ValueError) as error:
        notes.append(f"no questions or rewards: the dataset does not load ({error})")
        return None, None


def _reward(cassette: Cassette, use_r1_zero_format: bool, notes: list[str]) -> RewardFn:
    try:
        recorded = _plugged(cassette, "reward_fn") or recorded_reward_fn(cassette.path)
    except ConfigError as error:
        notes.append(f"scoring with the task's reward instead: {error}")
        recorded = None
    return recorded or make_reward_fn(use_r1_zero_format)


def _validation_reward(cassette: Cassette, use_r1_zero_format: bool, notes: list[str]) -> RewardFn:
    try:
        recorded = _plugged(cassette, "eval_reward_fn")
    except ConfigError as error:
        notes.append(f"scoring validation with the task's reward instead: {error}")
        recorded = None
    return recorded or make_reward_fn(use_r1_zero_format)


def _plugged(cassette: Cassette, flag: str) -> RewardFn | None:
    """The reward the recorded run's --reward_fn or --eval_reward_fn named, imported here."""
    spec = cassette.config.get(flag)
    return None if spec is None else load_function(f"--{flag}", spec).reward()


def _segments(calls: Sequence[Call]) -> list[list[Call]]:
    """The calls of each step (and of the final validation), each from its fresh sampler on."""
    segments: list[list[Call]] = []
    for call in calls:
        if call.method == STEP_START:
            segments.append([])
        if segments:
            segments[-1].append(call)
    return segments


def _start_step(calls: Sequence[Call]) -> int:
    """0, or the step of the checkpoint a resumed run started from."""
    for call in calls:
        if call.method == "create_training_client_from_state_with_optimizer":
            return step_of(str(call.request.get("path", ""))) or 0
        if call.method == "create_lora_training_client":
            return 0
    return 0


# -- one step -------------------------------------------------------------------------------------


def _step(
    number: int,
    final: bool,
    calls: list[Call],
    batch: list[Problem] | None,
    questions: list[Question] | None,
    scoring: Scoring,
    run: Config | None,
) -> Step:
    samples = [c for c in calls if c.method == "sample" and c.response is not None]
    rollout_calls = [c for c in samples if purpose_of(c) == "rollout"]
    validation_calls = [c for c in samples if purpose_of(c) == "evaluation"]
    responses_P = [decode(c.response) for c in rollout_calls]
    groups = _groups(rollout_calls, responses_P, batch, scoring)
    trained = _trained(calls) if groups else []
    sources_D, signal_P_G, steps = _origins(trained, groups) if trained else ([], None, [])
    if steps:
        _attach_training(groups, sources_D, signal_P_G, steps)
    metrics: dict[str, float] = {}
    if responses_P and batch is not None and len(batch) == len(responses_P):
        scored = score(responses_P, batch, scoring.tokenizer, scoring.reward_fn)
        metrics |= rollout_metrics(scored)
        for group, scores_G in zip(groups, scored.scores_P_G, strict=True):
            for rollout, reward in zip(group.rollouts, scores_G, strict=True):
                rollout.reward = reward
        if steps and run is not None:
            metrics |= training_metrics(steps, scored, sources_D, signal_P_G, run)
    elif responses_P:
        metrics |= length_metrics(*_lengths(responses_P))
    if rollout_calls:
        metrics["train/datums"] = float(len(sources_D))
    if steps and "train/loss" not in metrics:
        losses = [float(step.forward_backward.metrics["loss:sum"]) for step in steps]
        metrics["train/loss"] = float(np.mean(losses))
    validation: list[dict[str, Any]] = []
    if validation_calls and questions is not None and len(questions) == len(validation_calls):
        validation = answer_records(
            questions,
            [decode(c.request["prompt"]) for c in validation_calls],
            [decode(c.response) for c in validation_calls],
            scoring.tokenizer,
            scoring.validation_reward,
        )
        metrics |= validation_metrics(validation)
    timings = _timings(calls, rollout_calls)
    return Step(number, final and not rollout_calls, groups, validation, metrics, timings)


def _trained(calls: list[Call]) -> list[tuple[list[types.Datum], types.ForwardBackwardOutput, Any]]:
    """The step's optimizer steps as the loop sent them: the answered forward_backward calls
    before each optim_step (several when the step streamed its Datums), their Datums in order,
    their outputs combined as the SDK combines a chunked request's, and the optim_step's answer."""
    trained, datums, outputs = [], [], []
    for call in calls:
        if call.error is not None:
            continue
        if call.method == "forward_backward":
            datums += decode(call.request["data"])
            outputs.append(decode(call.response))
        elif call.method == "optim_step" and outputs:
            combined = combine_fwd_bwd_output_results(outputs)
            trained.append((datums, combined, decode(call.response)))
            datums, outputs = [], []
    return trained


def _groups(
    calls: list[Call],
    responses_P: list[types.SampleResponse],
    batch: list[Problem] | None,
    scoring: Scoring,
) -> list[QuestionGroup]:
    """Each rollout request with its question (when the dataset loads), whether its prompt is
    that question's, and its responses decoded (not yet scored)."""
    groups = []
    for p, (call, response) in enumerate(zip(calls, responses_P, strict=True)):
        prompt = decode(call.request["prompt"]).to_ints()
        problem = batch[p] if batch is not None and p < len(batch) else None
        matches = None
        if problem is not None:
            expected = format_prompt(problem.question, scoring.prompt)
            matches = encode_prompts(scoring.tokenizer, [expected])[0].to_ints() == prompt
        rollouts = []
        for sequence in response.sequences:
            tokens, logprobs = response_arrays(sequence)
            text = scoring.tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
            rollouts.append(Rollout(tokens, logprobs, sequence.stop_reason, text, None))
        groups.append(QuestionGroup(call, prompt, problem, matches, rollouts))
    return groups


def _origins(
    trained: list[tuple[list[types.Datum], types.ForwardBackwardOutput, Any]],
    groups: list[QuestionGroup],
) -> tuple[list[tuple[int, int]], np.ndarray, list[OptimizerStep]]:
    """The (problem, member) each trained Datum came from (each once, however many optimizer
    steps trained on it), the (P, G) signal they carry (0 for responses not trained on), and
    the optimizer steps with their Datums as indices into that list. A Datum's `model_input`
    plus its last target is its prompt and response."""
    members = {
        (*group.prompt_tokens, *rollout.tokens.tolist()): (p, g)
        for p, group in enumerate(groups)
        for g, rollout in enumerate(group.rollouts)
    }
    signal_P_G = np.zeros((len(groups), max(len(g.rollouts) for g in groups)), np.float32)
    sources_D: list[tuple[int, int]] = []
    position: dict[tuple[int, int], int] = {}
    steps = []
    for datums, output, optim in trained:
        indices = []
        for datum in datums:
            targets = datum.loss_fn_inputs["target_tokens"].to_numpy()
            p, g = members[(*datum.model_input.to_ints(), int(targets[-1]))]
            if (p, g) not in position:
                position[p, g] = len(sources_D)
                sources_D.append((p, g))
                signal = next(k for k in SIGNAL_INPUTS if k in datum.loss_fn_inputs)
                signal_P_G[p, g] = datum.loss_fn_inputs[signal].to_numpy()[-1]
            indices.append(position[p, g])
        steps.append(OptimizerStep(indices, output, optim))
    return sources_D, signal_P_G, steps


def _attach_training(
    groups: list[QuestionGroup],
    sources_D: list[tuple[int, int]],
    signal_P_G: np.ndarray,
    steps: list[OptimizerStep],
) -> None:
    """Each trained rollout's signal and the trainer's logprobs of its response tokens, from
    the first optimizer step that trained on it."""
    seen = set()
    for step in steps:
        for d, output in zip(step.datums, step.forward_backward.loss_fn_outputs, strict=True):
            if d in seen:
                continue
            seen.add(d)
            p, g = sources_D[d]
            rollout = groups[p].rollouts[g]
            rollout.advantage = float(signal_P_G[p, g])
            rollout.trainer_logprobs = output["logprobs"].to_numpy()[-len(rollout.tokens) :]


# The Datum inputs a loss type carries its per-token signal in.
SIGNAL_INPUTS: tuple[SignalInput, ...] = get_args(SignalInput)


def _run_config(cassette: Cassette) -> Config | None:
    """The recorded run's configuration (None for a cassette whose config does not build one)."""
    try:
        return config_from_record(recorded_flags(cassette.header))
    except (TypeError, ValueError):
        return None


def _lengths(responses_P: list[types.SampleResponse]) -> tuple[np.ndarray, np.ndarray]:
    """Every response's length and whether it was cut at max_tokens, in one row each."""
    sequences = [s for response in responses_P for s in response.sequences]
    lengths = np.array([[len(response_arrays(s)[0]) for s in sequences]])
    return lengths, np.array([[s.stop_reason == "length" for s in sequences]])


def _timings(calls: list[Call], rollout_calls: list[Call]) -> dict[str, float]:
    def span(chosen: list[Call]) -> float:
        if not chosen:
            return 0.0
        return max(c.submitted_s + c.latency_s for c in chosen) - min(c.submitted_s for c in chosen)

    return {
        "save": span([c for c in calls if c.method == STEP_START]),
        "sampling": span(rollout_calls),
        "training": span([c for c in calls if c.method in ("forward_backward", "optim_step")]),
        "step": span(calls),
    }
