"""Learning curves of GRPO runs: reward and validation accuracy against step and wall time.

Run from the repository root, with one or more runs (a log folder or its metrics.jsonl):

    python scripts/plot_metrics.py /tmp/grpo-tinker --out docs/curve.png
    python scripts/plot_metrics.py runs/a runs/b --labels a b --out docs/compare.png

Wall time is the sum of the steps' `time/total` (start-up and any time a resumed run was down
are left out). A step's reward is drawn when the step ends; validation at step s measures the
weights after s steps, so it is drawn at the time those weights were ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import tyro

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt

from harness.jsonl import read_json_lines

STEP = "progress/grpo_step"
REWARD = "reward/mean"
ACCURACY = "val/accuracy"
SECONDS = "time/total"


@dataclass(frozen=True)
class Curves:
    """One run's series; times are seconds since the first step began."""

    reward_step: np.ndarray
    reward_time: np.ndarray
    reward: np.ndarray
    accuracy_step: np.ndarray
    accuracy_time: np.ndarray
    accuracy: np.ndarray


@dataclass(frozen=True)
class Args:
    """Plot reward and validation accuracy of GRPO runs against step and wall time."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Log folders (holding metrics.jsonl) or metrics.jsonl files."""
    out: Path = Path("curves.png")
    """The PNG to write."""
    labels: tuple[str, ...] = ()
    """One legend label per run (default: the folder names)."""
    title: str = ""
    """Figure title."""


def metrics_file(run: Path) -> Path:
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no metrics.jsonl there")
    return path


def curves(rows: list[dict[str, float]]) -> Curves:
    """The series of one run's metrics rows (step rows, then the final validation row)."""
    rows = sorted(rows, key=lambda row: row[STEP])
    if not rows:
        raise ValueError("no metrics rows")
    end_time_R = np.cumsum([row.get(SECONDS, 0.0) for row in rows])
    start_time_R = end_time_R - [row.get(SECONDS, 0.0) for row in rows]
    trained = [i for i, row in enumerate(rows) if REWARD in row]
    validated = [i for i, row in enumerate(rows) if ACCURACY in row]
    return Curves(
        reward_step=np.array([rows[i][STEP] for i in trained]),
        reward_time=end_time_R[trained],
        reward=np.array([rows[i][REWARD] for i in trained]),
        accuracy_step=np.array([rows[i][STEP] for i in validated]),
        accuracy_time=start_time_R[validated],
        accuracy=np.array([rows[i][ACCURACY] for i in validated]),
    )


def plot(runs: list[tuple[str, Curves]], out: Path, title: str = "", reward: bool = True) -> Path:
    """Two panels, against step and against wall time; reward dashed (unless `reward` is
    False), accuracy solid. Beyond two runs the legend stands beside the panels."""
    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, run), color in zip(runs, colors * len(runs), strict=False):
        prefix = f"{label}: " if len(runs) > 1 else ""
        for axes, reward_x, accuracy_x in (
            (by_step, run.reward_step, run.accuracy_step),
            (by_time, run.reward_time, run.accuracy_time),
        ):
            if reward:
                axes.plot(reward_x, run.reward, "--", color=color, label=f"{prefix}train reward")
            axes.plot(
                accuracy_x, run.accuracy, "o-", color=color, label=f"{prefix}val accuracy (greedy)"
            )
    by_step.set_xlabel("GRPO step")
    by_time.set_xlabel("wall time in steps (s)")
    by_step.set_ylabel("reward / accuracy" if reward else "validation accuracy")
    if reward:
        by_step.set_ylim(0, 1)
    for axes in (by_step, by_time):
        axes.grid(alpha=0.3)
    if len(runs) > 2:
        by_time.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    else:
        by_step.legend(loc="lower right", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(figure)
    return out


def main(args: Args) -> None:
    if args.labels and len(args.labels) != len(args.runs):
        raise SystemExit(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs")
    labels = args.labels or tuple(
        run.parent.name if run.is_file() else run.name for run in args.runs
    )
    runs = [
        (label, curves(read_json_lines(metrics_file(run))))
        for label, run in zip(labels, args.runs, strict=True)
    ]
    print(f"wrote {plot(runs, args.out, args.title)}")


if __name__ == "__main__":
    main(tyro.cli(Args))
