"""Ctrl-C stops a run with exit code 130 and the resume message, on every backend; a run that
ends normally exits 0. Both used to abort now and then with "terminate called without an
active exception" (exit 134): a thread still in torch while the interpreter tore down."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = [
    sys.executable,
    "scripts/grpo_train_tinker.py",
    "--model_name=fixtures/tiny-arith",
    "--dataset=arith",
    "--use_r1_zero_format=False",
    "--learning_rate=1e-3",
    "--eval_n=8",
]
# About a second a step on two cores: an interrupt lands in sampling or training.
BUSY = ["--n_grpo_steps=50", "--rollout_batch_size=32", "--group_size=8",
        "--sampling_max_tokens=48"]  # fmt: skip
SHORT = ["--n_grpo_steps=1", "--rollout_batch_size=4", "--group_size=2", "--sampling_max_tokens=8"]


def start(backend: str, log_path: Path, flags: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*RUN, *flags, f"--backend={backend}", f"--log_path={log_path}"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "delay_s"), [("local", 0.2), ("local", 1.2), ("local-server", 0.6)]
)
def test_ctrl_c_mid_step_exits_130_with_the_resume_message(backend, delay_s, tmp_path):
    process = start(backend, tmp_path / "run", BUSY)
    for line in process.stderr:
        if line.startswith("step    0/"):
            break
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # impatient users press it twice
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 130, stderr
    assert "interrupted: rerun the same command to resume" in stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_short_runs_exit_0_every_time(tmp_path):
    for attempt in range(2):
        process = start("local", tmp_path / f"run{attempt}", SHORT)
        stderr = process.stderr.read()
        assert process.wait(timeout=120) == 0, stderr
        assert "done: 1 steps" in stderr and "terminate called" not in stderr
