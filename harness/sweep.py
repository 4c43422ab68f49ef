"""A sweep over the training script's flags: its points, where each run logs, which runs are
done, and the summary of what they measured (the runner is scripts/sweep.py)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness.config import Config, ConfigError
from harness.jsonl import read_json_lines
from harness.logger import STEP_KEY

ACCURACY = "val/accuracy"
BASELINE = "baseline"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the sweep: a point (flag values) and a seed."""

    point: str
    """The point's name: its flags that differ from the common ones, or "baseline"."""
    seed: int
    flags: tuple[str, ...]
    """The training script's whole command line."""
    log_path: Path
    n_grpo_steps: int


Point = list[tuple[str, str]]
"""A point as (flag, value) overrides of the common flags."""


def _flag_value(entry: str, what: str) -> tuple[str, str]:
    flag, sep, value = entry.removeprefix("--").partition("=")
    if not sep or not flag or not value:
        raise ConfigError(f"{what} {entry!r}: expected flag=value")
    if flag in ("seed", "log_path"):
        raise ConfigError(f"{what} {entry!r}: the sweep sets --{flag} itself (--seeds, --out)")
    return flag, value


def grid_points(entries: Sequence[str]) -> list[Point]:
    """The product of `flag=v1,v2` entries, or a ConfigError naming the bad one."""
    axes = []
    for entry in entries:
        flag, values = _flag_value(entry, "--grid")
        if "" in values.split(","):
            raise ConfigError(f"--grid {entry!r}: an empty value")
        axes.append([(flag, value) for value in values.split(",")])
    flags = [axis[0][0] for axis in axes]
    if len(set(flags)) != len(flags):
        raise ConfigError(f"--grid names a flag twice: {' '.join(entries)}")
    return [list(point) for point in itertools.product(*axes)] if axes else []


def listed_points(entries: Sequence[str]) -> list[Point]:
    """Points written one per entry, their flags joined by `+` (`epochs_per_rollout_batch=2+
    train_batch_size=128`)."""
    return [[_flag_value(part, "--points") for part in entry.split("+")] for entry in entries]


def sweep_runs(
    points: Sequence[Point],
    seeds: Sequence[int],
    common: Sequence[str],
    out: Path,
    parse: Callable[[Sequence[str]], Config],
) -> list[Run]:
    """Every (point, seed), seed by seed (so a sweep cut short has measured every point at the
    first seeds). `parse` turns a command line into a Config. A point is named by the flags it
    changes from the common ones; points that mean the same run are run once."""
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if not points:
        raise ConfigError("give --grid or --points: the sweep has no point")
    base = dataclasses.asdict(parse([*common, f"--log_path={out}"]))
    named: dict[str, list[str]] = {}
    for point in points:
        overrides = [f"--{flag}={value}" for flag, value in point]
        config = dataclasses.asdict(parse([*common, *overrides, f"--log_path={out}"]))
        changed = [
            f"{name}={_shown(config[name])}" for name in config if config[name] != base[name]
        ]
        named.setdefault(",".join(changed) or BASELINE, overrides)
    runs = []
    for seed in seeds:
        for name, overrides in named.items():
            log_path = out / name / f"seed{seed}"
            flags = (*common, *overrides, f"--seed={seed}", f"--log_path={log_path}")
            runs.append(Run(name, seed, flags, log_path, parse(flags).n_grpo_steps))
    return runs


def _shown(value: object) -> str:
    return str(value).replace("/", "_")


def finished(run: Run) -> bool:
    """Whether the run logged its final validation (the row of step n_grpo_steps)."""
    path = run.log_path / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = read_json_lines(path)
    return bool(rows) and rows[-1].get(STEP_KEY) == run.n_grpo_steps and ACCURACY in rows[-1]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one finished run measured."""

    point: str
    seed: int
    final_accuracy: float
    best_accuracy: float
    steps: int
    wall_s: float
    """The steps' time (`time/total` summed): start-up and time a resumed run was down left out."""
    sampled_tokens: float
    trained_tokens: float


def outcome(run: Run) -> Outcome:
    rows = read_json_lines(run.log_path / "metrics.jsonl")
    accuracies = [row[ACCURACY] for row in rows if ACCURACY in row]
    totals = [row for row in rows if "tokens/sampled_total" in row]
    return Outcome(
        point=run.point,
        seed=run.seed,
        final_accuracy=rows[-1][ACCURACY],
        best_accuracy=max(accuracies),
        steps=int(rows[-1][STEP_KEY]),
        wall_s=sum(row.get("time/total", 0.0) for row in rows),
        sampled_tokens=totals[-1]["tokens/sampled_total"] if totals else math.nan,
        trained_tokens=totals[-1]["tokens/trained_total"] if totals else math.nan,
    )


CSV_FIELDS = [field.name for field in dataclasses.fields(Outcome)]


def csv_rows(outcomes: Sequence[Outcome]) -> list[dict[str, object]]:
    return [dataclasses.asdict(o) for o in outcomes]


def markdown_table(outcomes: Sequence[Outcome], planned: Mapping[str, int]) -> str:
    """One row per point (in the order `planned` lists them, with its planned seed count):
    final and best greedy accuracy as the mean over seeds with the range, steps, mean wall
    time and tokens per run."""
    lines = [
        "| point | seeds | final accuracy, mean [min, max] | best accuracy, mean | steps"
        " | wall time per run (s) | sampled tokens per run | trained tokens per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for point, seeds in planned.items():
        done = [o for o in outcomes if o.point == point]
        if not done:
            lines.append(f"| {point} | 0 of {seeds} | not run | | | | | |")
            continue
        final = [o.final_accuracy for o in done]
        lines.append(
            f"| {point} | {len(done)} of {seeds}"
            f" | {statistics.mean(final):.3f} [{min(final):.3f}, {max(final):.3f}]"
            f" | {statistics.mean(o.best_accuracy for o in done):.3f}"
            f" | {done[0].steps} | {statistics.mean(o.wall_s for o in done):.0f}"
            f" | {statistics.mean(o.sampled_tokens for o in done):,.0f}"
            f" | {statistics.mean(o.trained_tokens for o in done):,.0f} |"
        )
    return "\n".join(lines) + "\n"
