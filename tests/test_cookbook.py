"""A client nobody here wrote: tinker-cookbook 0.6.1's recipes against `python -m harness.serve`.

Each recipe runs as a user runs it (its own process, its own command line, the cookbook as pip
installed it; see tests/cookbook-requirements.txt), on the committed tiny model served under
the name the cookbook knows, `Qwen/Qwen3-8B` (a Hugging Face cache whose snapshot is
fixtures/tiny-qwen3, so the server, the cookbook's tokenizer and its `qwen3` renderer all
resolve it offline). Every run is killed with SIGKILL once it has saved a checkpoint, then run
again: it must resume from that checkpoint and end with status 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.serve import KEY, REPO

if importlib.util.find_spec("tinker_cookbook") is None:  # a test dependency: fail, never skip
    raise ImportError(
        "tinker-cookbook is not installed: pip install --no-deps -r tests/cookbook-requirements.txt"
    )

MODEL = "Qwen/Qwen3-8B"
TIMEOUT_S = 240
REVISION = "0" * 40


def hub_cache_serving_the_tiny_model(hub: Path) -> None:
    """A Hugging Face hub cache where MODEL is fixtures/tiny-qwen3 (its files linked)."""
    repo = hub / f"models--{MODEL.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for file in (REPO / "fixtures" / "tiny-qwen3").iterdir():
        (snapshot / file.name).symlink_to(file)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> dict[str, str]:
    """`python -m harness.serve` on a free port; yields the environment its clients use."""
    root = tmp_path_factory.mktemp("cookbook")
    hub_cache_serving_the_tiny_model(root / "hub")
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(root / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TINKER_API_KEY": KEY,
        "TINKER_TELEMETRY": "0",
        "WANDB_MODE": "disabled",
    }
    command = [sys.executable, "-m", "harness.serve", f"--model={MODEL}", "--port=0"]
    command += [f"--storage_dir={root / 'storage'}", "--seed=0", "--log_level=warning"]
    log = root / "server.log"  # a file, not a pipe: a full pipe would block the server
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stderr=stderr)
    try:
        yield {**env, "BASE_URL": served_url(process, log)}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def served_url(process: subprocess.Popen, log: Path) -> str:
    """The address in the server's "serving MODEL at http://127.0.0.1:PORT (...)" line."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        for line in log.read_text().splitlines():
            if line.startswith(f"serving {MODEL} at "):
                return line.split(" at ", 1)[1].split(" ", 1)[0]
        assert process.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)


def recipe_command(recipe: str, arguments: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.support.cookbook_recipe", recipe, *arguments]


def checkpoints(log_path: Path) -> list[dict]:
    path = log_path / "checkpoints.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def kill_after_first_checkpoint(command: list[str], env: dict, log_path: Path) -> dict:
    """Run `command` until it has saved a resumable checkpoint after a trained step, SIGKILL
    it, and return that checkpoint's row."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not any(row.get("batch", 0) >= 1 for row in checkpoints(log_path)):
            assert process.poll() is None, f"the run ended ({process.returncode}) before saving"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    saved = [row for row in checkpoints(log_path) if "state_path" in row]
    assert "final" not in [row["name"] for row in saved], "killed after it had finished"
    return saved[-1]


def step_metrics(log_path: Path) -> list[dict]:
    """The rows of metrics.jsonl that report a step (rl/train.py adds a last row of totals)."""
    rows = [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if any(key.startswith("progress") for key in row)]


BASE = ["base_url={BASE_URL}", f"model_name={MODEL}", "log_path={log_path}"]
RECIPES = {
    # recipes/sl_loop.py: cross_entropy on chat-rendered conversations.
    "sl_loop": ("sl_loop", [*BASE, "batch_size=4", "max_length=256", "save_every=1"]),
    # recipes/rl_loop.py with its defaults (loss_fn=stable_reinforce, 7-day TTLs), smaller.
    "rl_loop": ("rl_loop", [*BASE, "batch_size=2", "group_size=4", "max_tokens=8", "save_every=1"]),
    # rl/train.py in its three execution modes on the cookbook's arithmetic environment (sync
    # with a KL penalty, post-update KL and rolling saves).
    "rl_train_sync": ("rl_train", [*BASE, "mode=sync"]),
    "rl_train_stream": ("rl_train", [*BASE, "mode=stream"]),
    "rl_train_async": ("rl_train", [*BASE, "mode=async"]),
}
MAX_STEPS = 3


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RECIPES))
def test_a_cookbook_recipe_runs_is_killed_and_resumes(server, tmp_path, case):
    recipe, template = RECIPES[case]
    log_path = tmp_path / case
    arguments = [a.format(BASE_URL=server["BASE_URL"], log_path=log_path) for a in template]
    # A first run long enough that the kill comes mid-run; the resumed run stops at MAX_STEPS.
    killed = kill_after_first_checkpoint(
        recipe_command(recipe, [*arguments, "max_steps=50"]), server, log_path
    )
    resumed = subprocess.run(
        recipe_command(recipe, [*arguments, f"max_steps={MAX_STEPS}"]),
        cwd=REPO,
        env=server,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert killed["state_path"] in output, "the rerun did not load the killed run's checkpoint"
    expected = list(range(killed["batch"], MAX_STEPS))
    resumed_rows = step_metrics(log_path)[-len(expected) :]
    assert expected and [row["step"] for row in resumed_rows] == expected
    if recipe != "sl_loop":  # the RL recipes train on the varied reward's advantages
        assert any(row.get("grad_norm:mean", 0) > 0 for row in resumed_rows)
    config = json.loads((log_path / "config.json").read_text())  # as the recipe logged it
    if case == "rl_loop":
        assert config["loss_fn"] == "stable_reinforce"  # its default
    if case == "rl_train_async":
        assert config["async_config"]["loss_fn"] == "stable_reinforce"  # its default
    if case == "rl_train_sync":  # rolling saves delete their predecessors through the REST API
        assert "Deleted rolling checkpoint" in output and "Failed to delete" not in output
        for key in ("kl_policy_base", "kl_pre_post_v1"):  # the KL penalty, post-update KL
            assert all(key in row for row in resumed_rows), sorted(resumed_rows[0])
    final = [row for row in checkpoints(log_path) if row["name"] == "final"]
    assert len(final) == 1 and final[0]["state_path"].startswith("tinker://")
