import numpy as np
import pytest

from harness.metrics import length_metrics, policy_metrics, reward_metrics
from harness.timing import Timer


def test_reward_metrics_by_hand():
    rewards = np.array([[1.0, 0.2], [0.0, 0.0]])
    metrics = reward_metrics(rewards, np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))
    assert metrics["reward/mean"] == pytest.approx(0.3)
    assert metrics["reward/std"] == pytest.approx(np.sqrt((0.49 + 0.01 + 0.09 + 0.09) / 4))
    assert (metrics["reward/min"], metrics["reward/max"]) == (0.0, 1.0)
    assert metrics["reward/format_mean"] == 0.5 and metrics["reward/answer_mean"] == 0.25


def test_length_metrics():
    metrics = length_metrics(np.array([[3, 5], [10, 2]]), np.array([[False, False], [True, False]]))
    assert metrics == {
        "response/length_mean": 5.0,
        "response/length_max": 10.0,
        "response/truncated_frac": 0.25,
    }


def test_policy_metrics_on_policy_is_neutral():
    logprobs = [np.array([-1.0, -2.0]), np.array([-0.5])]
    metrics = policy_metrics(logprobs, logprobs, [1.0, -1.0], cliprange=0.2)
    assert metrics["train/kl_sampler_trainer"] == 0.0
    assert metrics["train/ratio_mean"] == metrics["train/ratio_min"] == 1.0
    assert metrics["train/clip_frac"] == 0.0 and metrics["train/tokens"] == 3.0


def test_policy_metrics_clip_only_on_the_side_that_binds():
    sampler = [np.log(np.array([0.5, 0.5])), np.log(np.array([0.5, 0.5]))]
    # ratios 1.5 and 0.5 for both datums; A > 0 clips 1.5, A < 0 clips 0.5
    trainer = [np.log(np.array([0.75, 0.25])), np.log(np.array([0.75, 0.25]))]
    metrics = policy_metrics(sampler, trainer, [1.0, -1.0], cliprange=0.2)
    assert metrics["train/clip_frac"] == pytest.approx(0.5)
    assert metrics["train/ratio_max"] == pytest.approx(1.5)
    assert metrics["train/ratio_min"] == pytest.approx(0.5)
    expected_kl = np.mean(np.log([0.5, 0.5, 0.5, 0.5]) - np.log([0.75, 0.25, 0.75, 0.25]))
    assert metrics["train/kl_sampler_trainer"] == pytest.approx(expected_kl)


def test_timer_reports_every_phase_even_when_it_did_not_run():
    ticks = iter([0.0, 1.0, 3.0, 10.0])
    timer = Timer(["time/a", "time/b"], clock=lambda: next(ticks))
    with timer("time/a"):
        pass
    assert timer.totals() == {"time/a": 2.0, "time/b": 0.0, "time/total": 10.0}
