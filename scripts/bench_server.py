"""Per-step cost of the HTTP path: the training script through the real SDK and the local
server (`--backend=local-server`) versus the local backend in process (`--backend=local`).

Run from the repository root:

    python scripts/bench_server.py [--repeats=3] [--sampling_max_tokens=64] [--eval_n=16]

Each run is the README's offline smoke command (5 steps of 8 questions x 2 samples) in a fresh
process, with the tests' reward that varies within groups (`tests/support/varied_reward_run.py`)
so every step trains; the backends alternate. It prints the mean seconds per step (the metrics'
`time/*` columns, the final validation row left out), the difference, and each run's wall
time (imports and the server's start included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

REPO_ROOT = Path(__file__).resolve().parent.parent
PHASES = ("save_weights", "validation", "sampling", "training", "total")


@dataclass
class Args:
    repeats: int = 3
    sampling_max_tokens: int = 64
    eval_n: int = 16


def run(
    backend: str, log_path: Path, args: Args, extra: Sequence[str] = ()
) -> tuple[list[dict], float]:
    """One smoke run in a fresh process (with `extra` flags): its step rows and wall time."""
    command = [
        sys.executable,
        str(REPO_ROOT / "tests" / "support" / "varied_reward_run.py"),
        f"--backend={backend}",
        "--model_name=fixtures/tiny-qwen3",
        "--dataset_path=fixtures/gsm8k",
        "--n_grpo_steps=5",
        "--rollout_batch_size=8",
        "--group_size=2",
        "--save_every=2",
        "--eval_every=2",
        f"--sampling_max_tokens={args.sampling_max_tokens}",
        f"--eval_n={args.eval_n}",
        f"--log_path={log_path}",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]
    return rows[:-1], wall


def main(args: Args) -> None:
    steps: dict[str, list[dict]] = {"local": [], "local-server": []}
    walls: dict[str, list[float]] = {"local": [], "local-server": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for backend in steps:
                rows, wall = run(backend, Path(scratch) / f"{backend}-{repeat}", args)
                steps[backend] += rows
                walls[backend].append(wall)
    means = {
        backend: {p: float(np.mean([r[f"time/{p}"] for r in rows])) for p in PHASES}
        for backend, rows in steps.items()
    }
    print(f"seconds per step, mean of {len(steps['local'])} steps per backend")
    print(f"{'phase':>14} {'in process':>11} {'HTTP':>8} {'overhead':>9}")
    for phase in PHASES:
        local, served = means["local"][phase], means["local-server"][phase]
        print(f"{phase:>14} {local:11.3f} {served:8.3f} {served - local:+9.3f}")
    for backend, times in walls.items():
        print(f"wall per run ({backend}): " + ", ".join(f"{t:.1f} s" for t in times))


if __name__ == "__main__":
    main(tyro.cli(Args))
