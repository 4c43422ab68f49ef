"""`--estimate_cost`: the seed's configuration offline, and not one call to any service."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

import harness.backends
import harness.cli
from harness.cli import main
from tests.support.runs import REPO


@pytest.fixture
def no_service(monkeypatch):
    """Any attempt to open a service client, or to build one directly, fails the test."""
    opened: list[str] = []

    @contextlib.contextmanager
    def refuse(*args, **kwargs):
        opened.append("open_service_client")
        raise AssertionError("--estimate_cost opened a service client")
        yield

    monkeypatch.setattr(harness.cli, "open_service_client", refuse)
    monkeypatch.setattr(harness.backends, "open_service_client", refuse)
    return opened


def test_the_seed_configuration_offline_uses_the_qwen3_fixture(
    no_service, monkeypatch, capsys, gsm8k_dir, tmp_path
):
    monkeypatch.setattr("harness.estimate.hub_reachable", lambda: False)
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    log_path = tmp_path / "run"
    argv = [
        "--model_name=Qwen/Qwen3-8B",
        f"--dataset_path={gsm8k_dir}",
        "--estimate_cost=True",
        f"--log_path={log_path}",
        f"--record_cassette={tmp_path / 'cassette.jsonl'}",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert no_service == []
    assert not log_path.exists() and not (tmp_path / "cassette.jsonl").exists()
    assert "the Hugging Face hub is unreachable, so the Qwen3-vocabulary fixture" in out
    assert "200 steps of 256 questions x 8 samples (max_tokens 1024)" in out
    assert "52,300 sample (410,700 responses)" in out  # 200 x 256 rollouts + 11 x 100 greedy
    assert "2 requests of <= 1,024" in out  # the SDK's split of 2,048 Datums
    assert "cost (USD)" in out and "read 2026-10-07" in out
    sampled = next(line for line in out.splitlines() if line.startswith("sampled"))
    assert sampled.split()[-1] == f"{410_700 * 1024:,}"


def test_a_model_without_a_price_or_an_offline_tokenizer_says_so(
    no_service, monkeypatch, capsys, tiny_model_dir, gsm8k_dir
):
    argv = [f"--model_name={tiny_model_dir}", f"--dataset_path={gsm8k_dir}", "--estimate_cost=True"]
    assert main([*argv, "--n_grpo_steps=3"]) == 0
    out = capsys.readouterr().out
    assert f"no price for {tiny_model_dir}" in out and f"the tokenizer in {tiny_model_dir}" in out
    monkeypatch.setattr("harness.estimate.hub_reachable", lambda: False)
    assert main(["--model_name=org/unknown-model", *argv[1:]]) == 2
    assert (
        "org/unknown-model's tokenizer is not in the Hugging Face cache" in capsys.readouterr().err
    )
    assert no_service == []


def test_the_estimate_in_a_fresh_process_is_one_command(gsm8k_dir, tiny_model_dir):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "grpo_train_tinker.py"),
         f"--model_name={tiny_model_dir}", f"--dataset_path={gsm8k_dir}", "--estimate_cost=True",
         "--n_grpo_steps=2", "--assumed_response_tokens=50"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "expected: responses of 50 tokens on average" in result.stdout
