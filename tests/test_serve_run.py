"""The training script's smoke run through the real SDK and the local server: killed, rerun,
and in the end exactly the run the in-process backend makes with the same seed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from tests.support.runs import (
    REPO,
    SMOKE,
    checkpoint_steps,
    metric_steps,
    offline_args,
    run_script,
    wait_for,
)
from tests.support.varied_reward_run import varied_reward


def args(tiny_model_dir: Path, gsm8k_dir: Path, log_path: Path, backend: str) -> list[str]:
    flags = [f for f in offline_args(tiny_model_dir, gsm8k_dir, log_path) if "--backend" not in f]
    return [*SMOKE, *flags, f"--backend={backend}", "--seed=3"]


@pytest.mark.slow
def test_a_killed_server_run_resumes_to_the_in_process_run(tmp_path, tiny_model_dir, gsm8k_dir):
    in_process = tmp_path / "in_process"
    assert main(args(tiny_model_dir, gsm8k_dir, in_process, "local"), varied_reward) == 0

    served = tmp_path / "served"
    process = run_script(served, args(tiny_model_dir, gsm8k_dir, served, "local-server"))
    wait_for(lambda: 2 in metric_steps(served), process)  # step 3 runs: past checkpoint 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 in checkpoint_steps(served)
    process = run_script(served, args(tiny_model_dir, gsm8k_dir, served, "local-server"))
    assert process.wait() == 0, process.stderr.read()
    stderr = process.stderr.read()
    assert "via the local-server backend" in stderr and "resumed at step" in stderr
    assert "tml-local-" not in stderr  # the server's key is never printed

    expected = without_timings(read_json_lines(in_process / "metrics.jsonl"))
    assert any(row.get("train/datums", 0) > 0 for row in expected)  # it trained
    assert without_timings(read_json_lines(served / "metrics.jsonl")) == expected
    assert checkpoint_steps(served)[-1] == 5
    for entry in read_json_lines(served / "checkpoints" / "index.jsonl"):
        assert entry["state_path"].startswith("tinker://")
        assert entry["sampler_path"].startswith("tinker://")
    eval_files = sorted(p.name for p in (served / "eval").iterdir())
    assert eval_files == [f"step_{s:06d}.jsonl" for s in (0, 2, 4, 5)]


def test_a_standalone_server_serves_a_run_given_its_base_url(
    tmp_path, tiny_model_dir, gsm8k_dir, monkeypatch
):
    key = "tml-standalone-3b7a"
    environment = {**os.environ, "TINKER_API_KEY": key}
    server = subprocess.Popen(
        [sys.executable, "-m", "harness.serve", f"--model={tiny_model_dir}", "--port=0",
         f"--storage_dir={tmp_path / 'storage'}", "--log_level=warning"],
        cwd=REPO, env=environment, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = server.stderr.readline()
        base_url = re.search(r"at (http://127\.0\.0\.1:\d+)", banner).group(1)
        monkeypatch.setenv("TINKER_API_KEY", key)
        run = args(tiny_model_dir, gsm8k_dir, tmp_path / "run", "local-server")
        flags = [f for f in run if not f.startswith(("--n_grpo_steps", "--eval_every"))]
        assert main([*flags, "--n_grpo_steps=1", f"--base_url={base_url}"]) == 0
        rows = read_json_lines(tmp_path / "run" / "metrics.jsonl")
        assert [row["progress/grpo_step"] for row in rows] == [0, 1]
        assert any((tmp_path / "storage").rglob("adapter_model.safetensors"))  # its checkpoints
        assert not (tmp_path / "run" / "tinker-storage").exists()  # no server of the run's own
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0, server.stderr.read()
