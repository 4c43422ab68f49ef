"""Look inside a recorded run, offline: what each step sampled, earned and trained on.

python scripts/replay.py CASSETTE                     one row per step
python scripts/replay.py CASSETTE --step N            that step's groups, one row per response
python scripts/replay.py CASSETTE --step N --group K  one group in full, with logprob statistics

This script only renders: `harness.cassette_view` rebuilds the run from the recorded calls (each
step's questions as the loop took them, the responses scored again with the recorded reward, the
step's metrics by the loop's own functions). A cloud cassette may need --dataset_path (the hub is
not reachable offline) and --tokenizer (a folder with the model's tokenizer files).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from rich import box
from rich.cells import cell_len
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from harness.backends.replay_service import ReplayError
from harness.cassette_view import (
    QuestionGroup,
    Rollout,
    RunView,
    Step,
    find_step,
    load_view,
    replay_flags,
)
from harness.data import Problem
from harness.rewards import extract_answer


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _ground_truth(problem: Problem | None) -> str:
    return "?" if problem is None else problem.ground_truth


def _short(text: str) -> str:
    """One line of text, for a cell."""
    return escape(" ".join(text.split()))


def _extent(view: RunView) -> str:
    if view.cassette.segments is not None:  # one step read alone
        calls = len(view.cassette.calls)
        return f"{view.cassette.segments} steps (this one read alone, {calls} calls)"
    return f"{len(view.cassette.calls)} calls, {sum(not s.final for s in view.steps)} steps"


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


def _table(
    title: str | None, columns: str, width: int = 28, widths: Sequence[int] | None = None
) -> Table:
    """A borderless table of one-line cells: columns named `<name` are left-aligned text cut
    to `width` characters, the rest right-aligned numbers; `widths` fixes each column's
    width instead of measuring the rows."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    for i, name in enumerate(columns.split()):
        text = name.startswith("<")
        table.add_column(
            name.lstrip("<"),
            justify="left" if text else "right",
            no_wrap=True,
            overflow="ellipsis",
            min_width=None if text else len(name),
            max_width=width if text else None,
            width=None if widths is None else widths[i],
        )
    return table


def step_table(view: RunView) -> Table:
    table = _table("steps", "step reward acc format zero-var datums length trunc loss val")
    table.caption = (
        "reward, acc(uracy), format: means over the step's rollouts; zero-var: groups whose"
        " rewards are all equal (nothing to learn); length: mean/max response tokens; trunc:"
        " fraction cut at max_tokens; val: greedy validation accuracy before the step"
    )
    for step in view.steps:
        m = step.metrics
        groups = len(step.groups)
        zero_var = m.get("train/frac_zero_variance_groups")
        table.add_row(
            _step_name(step),
            _fmt(m.get("reward/mean")),
            _fmt(m.get("reward/answer_mean")),
            _fmt(m.get("reward/format_mean")),
            "—" if zero_var is None else f"{round(zero_var * groups)}/{groups}",
            str(int(m.get("train/datums", 0))),
            _length(m),
            _fmt(m.get("response/truncated_frac"), 2),
            "—" if "train/loss" not in m else f"{m['train/loss']:.3g}",
            _fmt(m.get("val/accuracy")),
        )
    return table


def _length(metrics: dict[str, float]) -> str:
    if "response/length_mean" not in metrics:
        return "—"
    return f"{metrics['response/length_mean']:.1f}/{metrics['response/length_max']:.0f}"


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


GROUP_COLUMNS = "group <question # <response <parsed fmt ans reward adv"
GROUPS_PER_PAGE = 16
"""Groups per printed table, so that a full-size step's first screen shows before the rest of
its 256 groups are laid out (rich takes seconds over 2,048 rows)."""


def groups_tables(step: Step) -> Iterator[Table]:
    """The step's groups, one row per response, in tables of `GROUPS_PER_PAGE` groups that
    print as one: the columns' widths are fixed from every row, the header is the first's."""
    rows_K = [_group_rows(k, group) for k, group in enumerate(step.groups)]
    columns = GROUP_COLUMNS.split()
    widths = [cell_len(name.lstrip("<")) for name in columns]
    for cells in (cells for rows in rows_K for cells in rows):
        widths = [max(w, Text.from_markup(c).cell_len) for w, c in zip(widths, cells, strict=True)]
    text_width = 24
    widths = [
        min(w, text_width) if name.startswith("<") else w
        for w, name in zip(widths, columns, strict=True)
    ]
    title = f"step {step.number}: groups (the question, then its ground truth)"
    for first in range(0, max(len(rows_K), 1), GROUPS_PER_PAGE):
        table = _table(title if first == 0 else None, GROUP_COLUMNS, text_width, widths)
        table.show_header = first == 0
        for rows in rows_K[first : first + GROUPS_PER_PAGE]:
            for g, cells in enumerate(rows):
                table.add_row(*cells, end_section=g == len(rows) - 1)
        yield table


def _group_rows(k: int, group: QuestionGroup) -> list[list[str]]:
    question = _short(group.problem.question) if group.problem else "?"
    labels = [question, f"→ {escape(_ground_truth(group.problem))}"]
    rows = []
    for g, rollout in enumerate(group.rollouts):
        reward = rollout.reward or {}
        rows.append(
            [
                str(k) if g == 0 else "",
                labels[g] if g < len(labels) else "",
                str(g),
                _short(rollout.text),
                escape(str(extract_answer(rollout.text))),
                _fmt(reward.get("format_reward"), 0),
                _fmt(reward.get("answer_reward"), 0),
                _fmt(reward.get("reward"), 2),
                _fmt(rollout.advantage, 3),
            ]
        )
    return rows


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
            for page, table in enumerate(groups_tables(find_step(view, args.step))):
                if page:
                    console.line()  # the gap between groups that a page break took
                console.print(table)
        else:
            console.print(group_detail(find_step(view, args.step), args.group))
    except (OSError, ValueError, ReplayError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
