"""GRPO learns: from the warm start, greedy validation accuracy rises through the real training
script; with every advantage's sign flipped (the reward negated) it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.jsonl import read_json_lines
from harness.rewards import gsm8k_reward_fn

REPO = Path(__file__).resolve().parent.parent
WARM_START = REPO / "fixtures" / "tiny-arith"
STEPS = 15
# Zeroed or wrong-signed advantages cannot gain this much; a stale sampler can (0.570 -> 0.680),
# which test_loop.py's on-policy KL check catches instead.
MARGIN = 0.1


def flags(log_path: Path) -> list[str]:
    return [
        "--backend=local",
        f"--model_name={WARM_START}",
        "--dataset=arith",
        "--use_r1_zero_format=False",
        f"--n_grpo_steps={STEPS}",
        "--rollout_batch_size=32",
        "--group_size=8",
        "--learning_rate=1e-3",
        "--sampling_max_tokens=48",
        "--eval_n=200",
        f"--eval_every={STEPS}",
        f"--save_every={STEPS}",
        "--seed=0",
        f"--log_path={log_path}",
    ]


def flipped_reward(response: str, ground_truth: str) -> dict[str, float]:
    """The reward negated: group normalisation then negates every advantage exactly."""
    reward = gsm8k_reward_fn(response, ground_truth, use_r1_zero_format=False)
    return {key: -value for key, value in reward.items()}


def accuracy_before_and_after(log_path: Path) -> tuple[float, float]:
    rows = read_json_lines(log_path / "metrics.jsonl")
    assert [row["progress/grpo_step"] for row in rows] == [*range(STEPS), STEPS]
    return rows[0]["val/accuracy"], rows[-1]["val/accuracy"]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory) -> tuple[float, float]:
    log_path = tmp_path_factory.mktemp("grpo")
    assert main(flags(log_path)) == 0
    return accuracy_before_and_after(log_path)


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory) -> tuple[float, float]:
    log_path = tmp_path_factory.mktemp("flipped")
    assert main(flags(log_path), reward_fn=flipped_reward) == 0
    return accuracy_before_and_after(log_path)


@pytest.mark.slow
def test_grpo_raises_greedy_validation_accuracy(grpo_run):
    before, after = grpo_run
    assert 0.3 <= before <= 0.6, "the warm start should be partly right"
    assert after - before >= MARGIN, (before, after)


@pytest.mark.slow
def test_with_flipped_advantages_accuracy_does_not_rise(grpo_run, flipped_run):
    before, after = flipped_run
    assert before == grpo_run[0]  # the same warm start and validation subset
    assert after <= before + 0.02, (before, after)
    assert grpo_run[1] - after >= MARGIN
