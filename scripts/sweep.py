"""Run a grid of the training script's flag values, several seeds each, and summarise them.

    python scripts/sweep.py --grid loss_type=no_baseline,grpo_clip learning_rate=3e-4,1e-3 \\
        --seeds 0 1 2 --out runs/sweep -- --backend=local --model_name=fixtures/tiny-arith ...

`--grid` takes the product of its `flag=v1,v2` entries; `--points` adds single points, their
flags joined by `+`. Each run logs in OUT/<point>/seed<k> (the point named by the flags it
changes, or "baseline"). Rerun the same command to go on: finished runs are not rerun, an
interrupted one resumes from its last checkpoint. When the runs are done (or some fail), it
writes OUT/summary.md (one row per point: final and best greedy accuracy over seeds, steps,
wall time, tokens), OUT/summary.csv (one row per finished run) and OUT/accuracy.png
(validation accuracy against step, each point's mean over its finished seeds, drawn with
scripts/plot_metrics.py's code).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tyro
from plot_metrics import Curves, curves, plot
from rich.console import Console
from rich.markup import escape

from harness.cli import parse_config
from harness.config import ConfigError, check_config
from harness.jsonl import read_json_lines
from harness.sweep import (
    CSV_FIELDS,
    Run,
    csv_rows,
    finished,
    grid_points,
    listed_points,
    markdown_table,
    outcome,
    sweep_runs,
)

TRAIN_SCRIPT = Path(__file__).resolve().parent / "grpo_train_tinker.py"


@dataclasses.dataclass(frozen=True)
class Args:
    """Run every point of a grid of training flags at each seed; resumable; summarised."""

    grid: tuple[str, ...] = ()
    """flag=v1,v2 entries; the sweep runs their product."""
    points: tuple[str, ...] = ()
    """More points, one per entry, flags joined by + (e.g. epochs_per_rollout_batch=2+
    train_batch_size=8)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (--seed) of every point."""
    out: Path = Path("runs/sweep")
    """The sweep's folder: one log folder per run, the summary and the plot."""
    jobs: int = 1
    """Runs at once."""
    summary_only: bool = False
    """Summarise the runs finished so far and run nothing."""


def main(argv: Sequence[str]) -> int:
    own, common = split_common(argv)
    args = tyro.cli(Args, args=own, config=(tyro.conf.FlagConversionOff,), use_underscores=True)
    console = Console(stderr=True, soft_wrap=True)
    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        points = grid_points(args.grid) + listed_points(args.points)
        runs = sweep_runs(points, args.seeds, common, args.out, parse_config)
        for run in runs:  # every run's flags checked before the first one starts
            check_config(parse_config(list(run.flags)))
    except ConfigError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    todo = [run for run in runs if not finished(run)]
    console.print(
        f"sweep: {len({r.point for r in runs})} points x {len(args.seeds)} seeds in {args.out};"
        f" {len(runs) - len(todo)} runs already finished, {len(todo)} to run",
        highlight=False,
    )
    failed = [] if args.summary_only else run_all(todo, args.jobs, console)
    write_summary(runs, args.out, console)
    if failed:
        console.print(
            f"[bold red]error:[/] {len(failed)} runs failed (their output:"
            f" {', '.join(str(r.log_path / 'output.log') for r in failed)}); rerun the same"
            " command to resume them",
            highlight=False,
        )
        return 1
    return 0


def split_common(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The sweep's own flags, and the training flags after `--` that every run shares."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def run_all(runs: Sequence[Run], jobs: int, console: Console) -> list[Run]:
    """Each run as its own training process (its output in its log folder); the failed ones."""
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, run): run for run in runs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            run = futures[future]
            code = future.result()
            status = "done" if code == 0 else f"[red]failed (exit {code})[/]"
            console.print(
                f"{escape(f'[{done}/{len(runs)}]')} {run.point} seed {run.seed}: {status}"
            )
            if code != 0:
                failed.append(run)
    return failed


def run_one(run: Run) -> int:
    run.log_path.mkdir(parents=True, exist_ok=True)
    with open(run.log_path / "output.log", "a", encoding="utf-8") as output:
        command = [sys.executable, str(TRAIN_SCRIPT), *run.flags]
        return subprocess.run(
            command, stdout=output, stderr=subprocess.STDOUT, check=False
        ).returncode


def write_summary(runs: Sequence[Run], out: Path, console: Console) -> None:
    done = [run for run in runs if finished(run)]
    outcomes = [outcome(run) for run in done]
    planned: dict[str, int] = {}
    for run in runs:
        planned[run.point] = planned.get(run.point, 0) + 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(markdown_table(outcomes, planned), encoding="utf-8")
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(outcomes))
    wrote = [out / "summary.md", out / "summary.csv"]
    if done:
        series = [
            (point, mean_curves([r for r in done if r.point == point]))
            for point in planned
            if any(r.point == point for r in done)
        ]
        title = "greedy validation accuracy, mean over each point's finished seeds"
        wrote.append(plot(series, out / "accuracy.png", title, reward=False))
    console.print(f"wrote {', '.join(map(str, wrote))}", highlight=False)
    console.print(markdown_table(outcomes, planned), highlight=False, markup=False)


def mean_curves(runs: Sequence[Run]) -> Curves:
    """The runs' series averaged run by run (they share their steps and validation steps)."""
    each = [curves(read_json_lines(run.log_path / "metrics.jsonl")) for run in runs]
    fields = [f.name for f in dataclasses.fields(Curves)]
    return Curves(**{name: np.mean([getattr(c, name) for c in each], axis=0) for name in fields})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
