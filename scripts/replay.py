"""Look inside a recorded run, offline: what each step sampled, earned and trained on.

python scripts/replay.py CASSETTE                     one row per step
python scripts/replay.py CASSETTE --step N            that step's groups, one row per response
python scripts/replay.py CASSETTE --step N --group K  one group in full, with logprob statistics

Everything is derived from the recorded calls; the run's config (in the cassette's header)
rebuilds each step's questions exactly as the loop took them, and the recorded reward scores the
responses again. A cloud cassette may need --dataset_path (the hub is not reachable offline)
and --tokenizer (a folder with the model's tokenizer files).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from tinker import types

from harness.backends.cassette import Call, Cassette, read_cassette
from harness.backends.cassette_codec import decode
from harness.backends.replay import ReplayError, load_tokenizer, recorded_reward_fn
from harness.config import Config, ConfigError
from harness.data import BatchCursor, DatasetUnavailable, Problem, load_problems, next_batch
from harness.evaluation import validation_subset
from harness.plugins import load_function
from harness.prompts import format_prompt
from harness.rewards import extract_answer, make_reward_fn
from harness.rollouts import encode_prompts

Reward = Callable[[str, str], dict[str, float]]


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

    @property
    def rewards(self) -> list[float] | None:
        if any(r.reward is None for r in self.rollouts):
            return None
        return [r.reward["reward"] for r in self.rollouts]


@dataclasses.dataclass
class Step:
    number: int
    final: bool
    groups: list[QuestionGroup]
    validation: list[Rollout]
    loss: float | None
    n_datums: int
    timings: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How the run read and scored responses."""

    tokenizer: Any
    reward_fn: Reward
    """The reward the run trained on (the recorded one)."""
    validation_reward: Reward
    """The reward validation used: the task's, or the recorded --eval_reward_fn."""
    use_r1_zero_format: bool


@dataclasses.dataclass
class RunView:
    cassette: Cassette
    config: dict[str, Any]
    steps: list[Step]
    notes: list[str]


# -- rebuilding the run ---------------------------------------------------------------------------


def load_view(
    path: str | Path, dataset_path: str | None, tokenizer: str | None, step: int | None = None
) -> RunView:
    """The run's view; with `step`, of that step alone (a binary cassette's other steps are
    not read)."""
    if step is None:
        cassette = read_cassette(path)
    else:
        start = _start_step(read_cassette(path, segment=0).calls)
        cassette = read_cassette(path, segment=max(step - start, 0))
    config = cassette.config
    notes: list[str] = []
    r1_zero = config.get("use_r1_zero_format", True)
    scoring = Scoring(
        tokenizer=load_tokenizer(_tokenizer_source(cassette), cassette, tokenizer),
        reward_fn=_reward(cassette, r1_zero, notes),
        validation_reward=_validation_reward(cassette, r1_zero, notes),
        use_r1_zero_format=r1_zero,
    )
    train_problems, test_problems = _problems(config, dataset_path, notes)
    start = _start_step(cassette.calls)
    cursor = _cursor_at(start + cassette.first_segment, train_problems, config)
    val_problems = None
    if test_problems is not None:
        indices = validation_subset(len(test_problems), config["eval_n"], config["seed"])
        val_problems = [test_problems[i] for i in indices]
    steps = []
    for k, calls in enumerate(_segments(cassette.calls), start=cassette.first_segment):
        number = start + k
        batch = None
        if train_problems is not None:
            indices, cursor = next_batch(
                cursor, len(train_problems), config["rollout_batch_size"], config["seed"]
            )
            batch = [train_problems[i] for i in indices]
        final = number == config.get("n_grpo_steps")
        step = _step(number, final, calls, batch, val_problems, scoring)
        steps.append(step)
        if any(g.prompt_matches is False for g in step.groups):
            notes.append(
                f"step {number}: prompts differ from the dataset's questions (another dataset?"
                " pass --dataset_path)"
            )
    return RunView(cassette, config, steps, notes)


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


def _reward(cassette: Cassette, use_r1_zero_format: bool, notes: list[str]) -> Reward:
    try:
        recorded = _plugged(cassette, "reward_fn") or recorded_reward_fn(cassette.path)
    except ConfigError as error:
        notes.append(f"scoring with the task's reward instead: {error}")
        recorded = None
    return recorded or make_reward_fn(use_r1_zero_format)


def _validation_reward(cassette: Cassette, use_r1_zero_format: bool, notes: list[str]) -> Reward:
    try:
        recorded = _plugged(cassette, "eval_reward_fn")
    except ConfigError as error:
        notes.append(f"scoring validation with the task's reward instead: {error}")
        recorded = None
    return recorded or make_reward_fn(use_r1_zero_format)


def _plugged(cassette: Cassette, flag: str) -> Reward | None:
    """The reward the recorded run's --reward_fn or --eval_reward_fn named, imported here."""
    spec = cassette.config.get(flag)
    return None if spec is None else load_function(f"--{flag}", spec).reward()


def _segments(calls: Sequence[Call]) -> list[list[Call]]:
    """The calls of each step: from one fresh sampler (DESIGN step 1) to the next."""
    segments: list[list[Call]] = []
    for call in calls:
        if call.method == "save_weights_and_get_sampling_client":
            segments.append([])
        if segments:
            segments[-1].append(call)
    return segments


def _start_step(calls: Sequence[Call]) -> int:
    """0, or the step a resumed run's checkpoint path names."""
    for call in calls:
        if call.method == "create_training_client_from_state_with_optimizer":
            found = re.search(r"step_(\d+)", str(call.request.get("path", "")))
            return int(found.group(1)) if found else 0
        if call.method == "create_lora_training_client":
            return 0
    return 0


def _cursor_at(step: int, problems: list[Problem] | None, config: dict[str, Any]) -> BatchCursor:
    cursor = BatchCursor()
    for _ in range(step if problems is not None else 0):
        _, cursor = next_batch(cursor, len(problems), config["rollout_batch_size"], config["seed"])
    return cursor


def _is_rollout(call: Call) -> bool:
    return call.method == "sample" and "seed" in call.request.get("sampling_params", {})


def _step(
    number: int,
    final: bool,
    calls: list[Call],
    batch: list[Problem] | None,
    val_problems: list[Problem] | None,
    scoring: Scoring,
) -> Step:
    samples = [c for c in calls if c.method == "sample" and c.response is not None]
    rollout_calls = [c for c in samples if _is_rollout(c)]
    validation_calls = [c for c in samples if not _is_rollout(c)]
    fb = next((c for c in calls if c.method == "forward_backward"), None)
    datums = decode(fb.request["data"]) if fb is not None else []
    output = decode(fb.response) if fb is not None and fb.error is None else None
    trained = _by_sequence(datums, output.loss_fn_outputs if output is not None else [])
    groups = [
        _group(call, _nth(batch, p), trained, scoring) for p, call in enumerate(rollout_calls)
    ]
    validation = [
        rollout
        for i, call in enumerate(validation_calls)
        for rollout in _rollouts(
            call, scoring.tokenizer, scoring.validation_reward, _nth(val_problems, i)
        )
    ]
    loss = None if output is None else float(output.metrics.get("loss:sum", float("nan")))
    return Step(number, final and not rollout_calls, groups, validation, loss, len(datums),
                _timings(calls, rollout_calls))  # fmt: skip


def _nth(problems: list[Problem] | None, i: int) -> Problem | None:
    return problems[i] if problems is not None and i < len(problems) else None


def _group(
    call: Call,
    problem: Problem | None,
    trained: dict[tuple[int, ...], tuple[float, np.ndarray | None]],
    scoring: Scoring,
) -> QuestionGroup:
    """One rollout request: its responses, rewards, and what training made of each."""
    prompt_tokens = decode(call.request["prompt"]).to_ints()
    matches = None
    if problem is not None:
        expected = format_prompt(problem.question, scoring.use_r1_zero_format)
        matches = encode_prompts(scoring.tokenizer, [expected])[0].to_ints() == prompt_tokens
    rollouts = _rollouts(call, scoring.tokenizer, scoring.reward_fn, problem)
    for rollout in rollouts:
        key = (*prompt_tokens, *rollout.tokens.tolist())
        if key in trained:
            rollout.advantage, trainer_logprobs = trained[key]
            if trainer_logprobs is not None:
                rollout.trainer_logprobs = trainer_logprobs[-len(rollout.tokens) :]
    return QuestionGroup(call, prompt_tokens, problem, matches, rollouts)


def _by_sequence(
    datums: list[types.Datum], outputs: list[dict[str, types.TensorData]]
) -> dict[tuple[int, ...], tuple[float, np.ndarray | None]]:
    """Each trained rollout's advantage and trainer logprobs, by prompt + response tokens
    (`model_input` plus the last target is exactly that)."""
    found = {}
    for d, datum in enumerate(datums):
        targets = datum.loss_fn_inputs["target_tokens"].to_numpy()
        key = (*datum.model_input.to_ints(), int(targets[-1]))
        advantage = float(datum.loss_fn_inputs["advantages"].to_numpy()[-1])
        logprobs = outputs[d]["logprobs"].to_numpy() if d < len(outputs) else None
        found[key] = (advantage, logprobs)
    return found


def _rollouts(
    call: Call, tokenizer: Any, reward_fn: Reward, problem: Problem | None
) -> list[Rollout]:
    response: types.SampleResponse = decode(call.response)
    rollouts = []
    for sequence in response.sequences:
        tokens = np.asarray(sequence.tokens, dtype=np.int64)
        text = tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
        reward = reward_fn(text, problem.ground_truth) if problem is not None else None
        logprobs = np.asarray(sequence.logprobs or [], dtype=np.float64)
        rollouts.append(Rollout(tokens, logprobs, sequence.stop_reason, text, reward))
    return rollouts


def _timings(calls: list[Call], rollout_calls: list[Call]) -> dict[str, float]:
    def span(chosen: list[Call]) -> float:
        if not chosen:
            return 0.0
        return max(c.submitted_s + c.latency_s for c in chosen) - min(c.submitted_s for c in chosen)

    return {
        "save": span([c for c in calls if c.method == "save_weights_and_get_sampling_client"]),
        "sampling": span(rollout_calls),
        "training": span([c for c in calls if c.method in ("forward_backward", "optim_step")]),
        "step": span(calls),
    }


# -- showing it -----------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _ground_truth(problem: Problem | None) -> str:
    return "?" if problem is None else problem.ground_truth


def _short(text: str) -> str:
    """One line of text, for a cell."""
    return escape(" ".join(text.split()))


def header_panel(view: RunView) -> Panel:
    header = view.cassette.header
    lines = [
        f"recorded {header.get('recorded_at')} on the {header.get('backend')} backend:"
        f" {header.get('model')}, harness {header.get('harness')}, tinker {header.get('tinker')}",
        f"{_extent(view)};"
        f" reward {header.get('reward') or view.config.get('reward_fn') or 'the task reward'}",
        *(
            f"{name}: {plugged['function']} (sha256 {plugged['sha256'][:12]})"
            for name, plugged in (header.get("plugged") or {}).items()
        ),
        f"replay: python scripts/grpo_train_tinker.py {' '.join(replay_flags(view))}",
        *(f"[yellow]note:[/] {escape(note)}" for note in view.notes),
    ]
    return Panel("\n".join(lines), title=escape(str(view.cassette.path)), expand=False)


def _extent(view: RunView) -> str:
    if view.cassette.segments is not None:  # one step read alone
        calls = len(view.cassette.calls)
        return f"{view.cassette.segments} steps (this one read alone, {calls} calls)"
    return f"{len(view.cassette.calls)} calls, {sum(not s.final for s in view.steps)} steps"


def replay_flags(view: RunView) -> list[str]:
    """The flags that replay this cassette: the recorded ones that are not defaults."""
    defaults = dataclasses.asdict(Config())
    skip = {"backend", "log_path", "record_cassette", "cassette", "replay_realtime", "base_url"}
    flags = ["--backend=replay", f"--cassette={view.cassette.path}"]
    for name, value in view.config.items():
        if name not in skip and name in defaults and value != defaults[name]:
            flags.append(f"--{name}={value}")
    return flags


def _table(title: str, columns: str, width: int = 28) -> Table:
    """A borderless table of one-line cells: columns named `<name` are left-aligned text cut
    to `width` characters, the rest right-aligned numbers."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    for name in columns.split():
        text = name.startswith("<")
        table.add_column(
            name.lstrip("<"),
            justify="left" if text else "right",
            no_wrap=True,
            overflow="ellipsis",
            min_width=None if text else len(name),
            max_width=width if text else None,
        )
    return table


def step_table(view: RunView) -> Table:
    table = _table("steps", "step reward acc format 0-var datums length trunc loss val")
    table.caption = (
        "reward, acc(uracy), format: means over the step's rollouts; 0-var: groups whose"
        " rewards are all equal (nothing to learn); length: mean/max response tokens; trunc:"
        " fraction cut at max_tokens; val: greedy validation accuracy before the step"
    )
    for step in view.steps:
        rollouts = [r for g in step.groups for r in g.rollouts]
        rewards = [r.reward for r in rollouts if r.reward is not None]
        lengths = [len(r.tokens) for r in rollouts]
        rewards_P = [g.rewards for g in step.groups if g.rewards is not None]
        zero_var = sum(len(set(r)) == 1 for r in rewards_P)
        val = [r.reward["answer_reward"] for r in step.validation if r.reward is not None]
        table.add_row(
            _step_name(step),
            _fmt(_mean([r["reward"] for r in rewards])),
            _fmt(_mean([r["answer_reward"] for r in rewards])),
            _fmt(_mean([r["format_reward"] for r in rewards])),
            f"{zero_var}/{len(rewards_P)}" if rewards_P else "—",
            str(step.n_datums),
            f"{_fmt(_mean(lengths), 1)}/{max(lengths)}" if lengths else "—",
            _fmt(_mean([r.stop_reason == "length" for r in rollouts]), 2),
            "—" if step.loss is None else f"{step.loss:.3g}",
            _fmt(_mean(val)),
        )
    return table


def timing_table(view: RunView) -> Table:
    table = _table(
        "seconds per step, from the recorded latencies", "step save sampling training total"
    )
    for step in view.steps:
        t = step.timings
        table.add_row(
            _step_name(step), *(_fmt(t[k], 2) for k in ("save", "sampling", "training", "step"))
        )
    return table


def _step_name(step: Step) -> str:
    return "final" if step.final else str(step.number)


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


def groups_table(step: Step) -> Table:
    table = _table(
        f"step {step.number}: groups (the question, then its ground truth)",
        "group <question # <response <parsed fmt ans reward adv",
        width=24,
    )
    for k, group in enumerate(step.groups):
        question = _short(group.problem.question) if group.problem else "?"
        labels = [question, f"→ {escape(_ground_truth(group.problem))}"]
        for g, rollout in enumerate(group.rollouts):
            reward = rollout.reward or {}
            table.add_row(
                str(k) if g == 0 else "",
                labels[g] if g < len(labels) else "",
                str(g),
                _short(rollout.text),
                escape(str(extract_answer(rollout.text))),
                _fmt(reward.get("format_reward"), 0),
                _fmt(reward.get("answer_reward"), 0),
                _fmt(reward.get("reward"), 2),
                _fmt(rollout.advantage, 3),
                end_section=g == len(group.rollouts) - 1,
            )
    return table


def group_detail(step: Step, k: int) -> Group:
    if not 0 <= k < len(step.groups):
        raise ValueError(f"--group={k}: step {step.number} has groups 0..{len(step.groups) - 1}")
    group = step.groups[k]
    matches = {True: "matches the dataset", False: "DIFFERS from the dataset", None: "unchecked"}
    parts: list[Any] = [
        Panel(
            f"{escape(group.problem.question) if group.problem else '?'}\n\n"
            f"ground truth: {escape(_ground_truth(group.problem))}\n"
            f"prompt: {len(group.prompt_tokens)} tokens, {matches[group.prompt_matches]};"
            f" recorded as call {group.call.index}, latency {group.call.latency_s:.3f} s",
            title=f"step {step.number}, group {k}",
        )
    ]
    for g, rollout in enumerate(group.rollouts):
        parts.append(Panel(escape(rollout.text), title=_rollout_title(g, rollout)))
    return Group(*parts)


def _rollout_title(g: int, rollout: Rollout) -> str:
    reward = rollout.reward or {}
    logprobs = rollout.logprobs
    stats = [
        f"response {g}: {len(rollout.tokens)} tokens, stop {rollout.stop_reason}",
        f"parsed {escape(str(extract_answer(rollout.text)))}",
        f"reward {_fmt(reward.get('reward'), 2)} (format {_fmt(reward.get('format_reward'), 1)},"
        f" answer {_fmt(reward.get('answer_reward'), 1)})",
        f"advantage {_fmt(rollout.advantage)}",
    ]
    if len(logprobs):
        stats.append(
            f"logprob mean {logprobs.mean():.3f} min {logprobs.min():.3f} sum {logprobs.sum():.2f}"
        )
    if rollout.trainer_logprobs is not None and len(logprobs):
        gap = rollout.trainer_logprobs - logprobs
        stats.append(
            f"trainer-sampler logprob gap mean {gap.mean():.2e} max |{np.abs(gap).max():.2e}|"
        )
    return " | ".join(stats)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cassette", help="a cassette recorded with --record_cassette")
    parser.add_argument("--step", type=int, help="show this step's groups")
    parser.add_argument("--group", type=int, help="with --step: show this group in full")
    parser.add_argument("--dataset_path", help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--tokenizer", help="folder (or cached hub id) of the model's tokenizer")
    args = parser.parse_args(argv)
    if args.group is not None and args.step is None:
        parser.error("--group needs --step")
    # Tables are laid out for 100+ columns; a pipe gets 120 rather than rich's 80.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    try:
        view = load_view(args.cassette, args.dataset_path, args.tokenizer, args.step)
        console.print(header_panel(view))
        if args.step is None:
            console.print(step_table(view))
            console.print(timing_table(view))
        elif args.group is None:
            console.print(groups_table(find_step(view, args.step)))
        else:
            console.print(group_detail(find_step(view, args.step), args.group))
    except (OSError, ValueError, ReplayError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
