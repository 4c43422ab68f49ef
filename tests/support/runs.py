"""Training runs of the smoke configuration: flags, a run as its own process, what it wrote."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from harness.jsonl import read_json_lines

REPO = Path(__file__).resolve().parent.parent.parent
SMOKE = [
    "--n_grpo_steps=5",
    "--rollout_batch_size=8",
    "--group_size=2",
    "--save_every=2",
    "--eval_every=2",
]


def offline_args(tiny_model_dir: Path, gsm8k_dir: Path, log_path: Path) -> list[str]:
    return [
        "--backend=local",
        f"--model_name={tiny_model_dir}",
        f"--dataset_path={gsm8k_dir}",
        f"--log_path={log_path}",
        "--sampling_max_tokens=24",
        "--eval_n=6",
        "--learning_rate=1e-3",
    ]


def run_script(log_path: Path, base_args: list[str]) -> subprocess.Popen:
    """The training script with the varied reward (`tests.support.varied_reward_run`), as its
    own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.varied_reward_run", *base_args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def checkpoint_steps(log_path: Path) -> list[int]:
    return [row["step"] for row in read_json_lines(log_path / "checkpoints" / "index.jsonl")]


def metric_steps(log_path: Path) -> list[int]:
    return [row["progress/grpo_step"] for row in read_json_lines(log_path / "metrics.jsonl")]
