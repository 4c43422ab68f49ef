"""Golden values for the GRPO math, each worked out by hand in the test."""

import math

import pytest
import torch

from harness.grpo import (
    compute_group_normalized_rewards,
    compute_grpo_clip_loss,
    compute_naive_policy_gradient_loss,
    compute_policy_gradient_loss,
    group_normalized_advantages,
    grpo_microbatch_train_step,
    masked_mean,
    masked_normalize,
)

# Three groups of four: [1, 0, 0, 1], [1, .2, .2, .2] and the constant [.2, .2, .2, .2].
SCORES = {
    "a": (1.0, 1.0, 1.0),
    "b": (0.0, 0.0, 0.0),
    "c": (0.0, 0.0, 0.0),
    "d": (1.0, 1.0, 1.0),
    "e": (1.0, 1.0, 1.0),
    "f": (0.2, 1.0, 0.0),
    "g": (0.2, 1.0, 0.0),
    "h": (0.2, 1.0, 0.0),
    "i": (0.2, 1.0, 0.0),
    "j": (0.2, 1.0, 0.0),
    "k": (0.2, 1.0, 0.0),
    "l": (0.2, 1.0, 0.0),
}
RESPONSES = list(SCORES)
EPS = 1e-6


def reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    assert ground_truth == "42"
    reward, format_reward, answer_reward = SCORES[response]
    return {"reward": reward, "format_reward": format_reward, "answer_reward": answer_reward}


def group_rewards(normalize_by_std: bool, group_size: int = 4):
    return compute_group_normalized_rewards(
        reward_fn=reward_fn,
        rollout_responses=RESPONSES,
        repeated_ground_truths=["42"] * len(RESPONSES),
        group_size=group_size,
        advantage_eps=EPS,
        normalize_by_std=normalize_by_std,
    )


def test_group_normalized_rewards_with_std():
    advantages, raw_rewards, _ = group_rewards(normalize_by_std=True)
    # Group 1: mean .5, deviations +-.5, n-1 variance 4 * .25 / 3 = 1/3.
    a1 = 0.5 / (math.sqrt(1 / 3) + EPS)
    # Group 2: mean (1 + .6) / 4 = .4, deviations .6 and -.2, variance (.36 + 3 * .04) / 3 = .16.
    a2_high, a2_low = 0.6 / (0.4 + EPS), -0.2 / (0.4 + EPS)
    expected = [a1, -a1, -a1, a1, a2_high, a2_low, a2_low, a2_low, 0.0, 0.0, 0.0, 0.0]
    assert advantages.dtype == raw_rewards.dtype == torch.float32
    assert advantages.shape == raw_rewards.shape == (12,)
    torch.testing.assert_close(advantages, torch.tensor(expected))
    torch.testing.assert_close(raw_rewards, torch.tensor([SCORES[r][0] for r in RESPONSES]))
    # The constant group is exactly zero, not rounding residue divided by eps.
    assert advantages[8:].eq(0).all()


def test_group_normalized_rewards_without_std():
    advantages, _, _ = group_rewards(normalize_by_std=False)
    expected = [0.5, -0.5, -0.5, 0.5, 0.6, -0.2, -0.2, -0.2, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(advantages, torch.tensor(expected))


def test_group_normalized_rewards_metadata():
    _, _, metadata = group_rewards(normalize_by_std=True)
    rewards = [SCORES[r][0] for r in RESPONSES]
    mean = (2 + 1.6 + 0.8) / 12
    assert metadata["reward_mean"] == pytest.approx(mean)
    assert metadata["reward_std"] == pytest.approx(
        math.sqrt(sum((r - mean) ** 2 for r in rewards) / 12)
    )
    assert metadata["reward_max"] == 1.0
    assert metadata["reward_min"] == 0.0
    assert metadata["format_reward_mean"] == pytest.approx(10 / 12)
    assert metadata["answer_reward_mean"] == pytest.approx(3 / 12)
    assert metadata["frac_zero_variance_groups"] == pytest.approx(1 / 3)


def test_metadata_without_component_rewards():
    _, _, metadata = compute_group_normalized_rewards(
        lambda response, truth: {"reward": float(response)}, ["1", "0"], ["x", "x"], 2, EPS, True
    )
    assert "format_reward_mean" not in metadata
    assert metadata["reward_mean"] == 0.5


def test_group_size_one_without_std_gives_zero_advantages():
    advantages, _, _ = group_rewards(normalize_by_std=False, group_size=1)
    assert advantages.eq(0).all()


@pytest.mark.parametrize(
    ("responses", "truths", "group_size", "normalize_by_std", "message"),
    [
        (RESPONSES, ["42"] * 11, 4, True, "ground truths"),
        (RESPONSES, ["42"] * 12, 5, True, "multiple of group_size"),
        ([], [], 4, True, "multiple of group_size"),
        (RESPONSES, ["42"] * 12, 0, True, "group_size must be"),
        (RESPONSES, ["42"] * 12, 1, True, "group_size >= 2"),
    ],
)
def test_group_normalized_rewards_errors(responses, truths, group_size, normalize_by_std, message):
    with pytest.raises(ValueError, match=message):
        compute_group_normalized_rewards(
            reward_fn, responses, truths, group_size, EPS, normalize_by_std
        )


def test_group_normalized_advantages_on_a_reward_array():
    rewards_P_G = torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    # Row 0: mean 1, deviations -1, 0, 1, n-1 std sqrt(2 / 2) = 1.
    expected = torch.tensor([[-1 / (1 + EPS), 0.0, 1 / (1 + EPS)], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_normalized_advantages(rewards_P_G, EPS, True), expected)
    integer_rewards = torch.tensor([[0, 1, 2]])
    torch.testing.assert_close(
        group_normalized_advantages(integer_rewards, 0.0, False), torch.tensor([[-1.0, 0.0, 1.0]])
    )
    for bad in (torch.zeros(4), torch.zeros(2, 0), torch.tensor([[0.0, math.nan]])):
        with pytest.raises(ValueError):
            group_normalized_advantages(bad, EPS, False)


def test_naive_policy_gradient_loss():
    advantages = torch.tensor([[2.0], [-1.0]])
    log_probs = torch.tensor([[-0.5, -1.0], [-2.0, -0.25]])
    expected = torch.tensor([[1.0, 2.0], [-2.0, -0.25]])  # -A * log p
    torch.testing.assert_close(compute_naive_policy_gradient_loss(advantages, log_probs), expected)
    with pytest.raises(ValueError, match=r"\(batch_size, 1\)"):
        compute_naive_policy_gradient_loss(torch.tensor([2.0, -1.0]), log_probs)


# Ratios 1.0, 1.5 and 0.5 under cliprange .2 (bounds .8 and 1.2) for A = +1 and A = -1.
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [1.0, 1.5, 0.5]])
OLD_LOG_PROBS = torch.full((2, 3), -1.0)
POLICY_LOG_PROBS = OLD_LOG_PROBS + RATIOS.log()
CLIP_ADVANTAGES = torch.tensor([[1.0], [-1.0]])


def test_grpo_clip_loss_and_clipped_flags():
    loss, metadata = compute_grpo_clip_loss(CLIP_ADVANTAGES, POLICY_LOG_PROBS, OLD_LOG_PROBS, 0.2)
    # A = +1: min(1, 1) = 1; min(1.5, 1.2) = 1.2 (clipped); min(.5, .8) = .5.
    # A = -1: min(-1, -1) = -1; min(-1.5, -1.2) = -1.5; min(-.5, -.8) = -.8 (clipped).
    expected = torch.tensor([[-1.0, -1.2, -0.5], [1.0, 1.5, 0.8]])
    torch.testing.assert_close(loss, expected)
    assert metadata["clipped"].tolist() == [[False, True, False], [False, False, True]]
    torch.testing.assert_close(metadata["ratio"], RATIOS)


def test_grpo_clip_loss_errors():
    with pytest.raises(ValueError, match="old_log_probs shape"):
        compute_grpo_clip_loss(CLIP_ADVANTAGES, POLICY_LOG_PROBS, OLD_LOG_PROBS[:, :2], 0.2)
    with pytest.raises(ValueError, match="cliprange"):
        compute_grpo_clip_loss(CLIP_ADVANTAGES, POLICY_LOG_PROBS, OLD_LOG_PROBS, -0.1)


def test_policy_gradient_loss_dispatch():
    rewards = torch.tensor([[1.0], [0.0]])
    advantages = torch.tensor([[0.5], [-0.5]])
    no_baseline, metadata = compute_policy_gradient_loss(
        POLICY_LOG_PROBS, "no_baseline", raw_rewards=rewards
    )
    torch.testing.assert_close(no_baseline, -rewards * POLICY_LOG_PROBS)
    assert metadata == {}
    with_baseline, _ = compute_policy_gradient_loss(
        POLICY_LOG_PROBS, "reinforce_with_baseline", advantages=advantages
    )
    torch.testing.assert_close(with_baseline, -advantages * POLICY_LOG_PROBS)
    clip, clip_metadata = compute_policy_gradient_loss(
        POLICY_LOG_PROBS, "grpo_clip", None, CLIP_ADVANTAGES, OLD_LOG_PROBS, 0.2
    )
    torch.testing.assert_close(clip, torch.tensor([[-1.0, -1.2, -0.5], [1.0, 1.5, 0.8]]))
    assert "clipped" in clip_metadata


@pytest.mark.parametrize(
    ("loss_type", "arguments", "message"),
    [
        ("no_baseline", {"advantages": torch.ones(2, 1)}, "requires raw_rewards"),
        ("reinforce_with_baseline", {"raw_rewards": torch.ones(2, 1)}, "requires advantages"),
        ("grpo_clip", {"advantages": torch.ones(2, 1)}, "requires old_log_probs, cliprange"),
        ("grpo_clip", {"old_log_probs": OLD_LOG_PROBS, "cliprange": 0.2}, "requires advantages"),
        ("ppo", {"advantages": torch.ones(2, 1)}, "unknown loss_type 'ppo'"),
    ],
)
def test_policy_gradient_loss_missing_arguments(loss_type, arguments, message):
    with pytest.raises(ValueError, match=message):
        compute_policy_gradient_loss(POLICY_LOG_PROBS, loss_type, **arguments)


TENSOR = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[True, False, True], [False, True, True]])


@pytest.mark.parametrize(
    ("dim", "expected"),
    [
        (None, torch.tensor((1 + 3 + 5 + 6) / 4)),
        (0, torch.tensor([1 / 1, 5 / 1, (3 + 6) / 2])),
        (1, torch.tensor([(1 + 3) / 2, (5 + 6) / 2])),
        (-1, torch.tensor([(1 + 3) / 2, (5 + 6) / 2])),
    ],
)
def test_masked_mean(dim, expected):
    torch.testing.assert_close(masked_mean(TENSOR, MASK, dim=dim), expected)
    torch.testing.assert_close(masked_mean(TENSOR, MASK.float(), dim=dim), expected)


@pytest.mark.parametrize(
    ("dim", "expected"),
    [
        (None, torch.tensor((1 + 3 + 5 + 6) / 2)),
        (0, torch.tensor([1 / 2, 5 / 2, (3 + 6) / 2])),
        (1, torch.tensor([(1 + 3) / 2, (5 + 6) / 2])),
        (-1, torch.tensor([(1 + 3) / 2, (5 + 6) / 2])),
    ],
)
def test_masked_normalize(dim, expected):
    torch.testing.assert_close(masked_normalize(TENSOR, MASK, 2.0, dim=dim), expected)


def test_masked_entries_never_leak():
    poisoned = TENSOR.masked_fill(~MASK, math.inf)
    torch.testing.assert_close(masked_mean(poisoned, MASK), torch.tensor(15 / 4))
    poisoned = TENSOR.masked_fill(~MASK, math.nan)
    torch.testing.assert_close(masked_normalize(poisoned, MASK, 1.0), torch.tensor(15.0))
    with pytest.raises(ValueError, match="mask shape"):
        masked_mean(TENSOR, MASK[0])


def test_microbatch_step_loss_and_gradient():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages = torch.tensor([[1.0], [-2.0]])
    loss, _ = grpo_microbatch_train_step(
        log_probs, mask, 2, "reinforce_with_baseline", advantages=advantages
    )
    # Per-token -A log p: [1, 2, (3)] and [-1, (-2), (-2)]; response means 1.5 and -1;
    # batch mean .25; divided by 2 accumulation steps.
    torch.testing.assert_close(loss, torch.tensor(0.125))
    # d/dlogp = -A * mask / n_tokens / batch / accumulation: -1/2/2/2 and 2/1/2/2.
    expected_grad = torch.tensor([[-0.125, -0.125, 0.0], [0.5, 0.0, 0.0]])
    torch.testing.assert_close(log_probs.grad, expected_grad)


def test_microbatch_step_no_baseline_uses_raw_rewards():
    log_probs = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    loss, _ = grpo_microbatch_train_step(
        log_probs, torch.ones(1, 2), 1, "no_baseline", raw_rewards=torch.tensor([[0.5]])
    )
    torch.testing.assert_close(loss, torch.tensor(0.5 * (1 + 3) / 2))
    torch.testing.assert_close(log_probs.grad, torch.tensor([[-0.25, -0.25]]))


def test_microbatch_step_grpo_clip():
    log_probs = POLICY_LOG_PROBS[:1].clone().requires_grad_()
    loss, metadata = grpo_microbatch_train_step(
        log_probs,
        torch.ones(1, 3),
        1,
        "grpo_clip",
        advantages=torch.tensor([[1.0]]),
        old_log_probs=OLD_LOG_PROBS[:1],
        cliprange=0.2,
    )
    # Per-token loss -1, -1.2 (clipped), -.5: mean -0.9.
    torch.testing.assert_close(loss, torch.tensor(-0.9))
    # Unclipped tokens: d(-ratio * A)/dlogp = -ratio * A / 3; the clipped token has none.
    torch.testing.assert_close(log_probs.grad, torch.tensor([[-1.0 / 3, 0.0, -0.5 / 3]]))
    torch.testing.assert_close(metadata["clip_fraction"], torch.tensor(1 / 3))


def test_microbatch_step_errors():
    log_probs = torch.zeros(2, 3, requires_grad=True)
    advantages = torch.ones(2, 1)
    empty_row = torch.tensor([[1, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="at least one response token"):
        grpo_microbatch_train_step(
            log_probs, empty_row, 1, "reinforce_with_baseline", advantages=advantages
        )
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        grpo_microbatch_train_step(
            log_probs, torch.ones(2, 3), 0, "reinforce_with_baseline", advantages=advantages
        )
    with pytest.raises(ValueError, match="requires advantages"):
        grpo_microbatch_train_step(log_probs, torch.ones(2, 3), 1, "grpo_clip")


def test_microbatch_step_grpo_no_clip_keeps_every_ratio():
    log_probs = POLICY_LOG_PROBS[:1].clone().requires_grad_()
    loss, metadata = grpo_microbatch_train_step(
        log_probs,
        torch.ones(1, 3),
        1,
        "grpo_no_clip",
        advantages=torch.tensor([[1.0]]),
        old_log_probs=OLD_LOG_PROBS[:1],
    )
    ratio = torch.exp(POLICY_LOG_PROBS[:1] - OLD_LOG_PROBS[:1])
    # -ratio * A per token, the clipped one's too; its gradient -ratio * A / 3 everywhere.
    torch.testing.assert_close(loss, -ratio.mean())
    torch.testing.assert_close(log_probs.grad, -ratio / 3)
    torch.testing.assert_close(metadata["ratio"], ratio)
    assert "clip_fraction" not in metadata
    with pytest.raises(ValueError, match="requires old_log_probs"):
        compute_policy_gradient_loss(log_probs, "grpo_no_clip", advantages=torch.ones(1, 1))


@pytest.mark.parametrize(
    ("normalization", "constant", "expected"),
    # Per-token -A log p with A = 1: [1, 2, (3)] and [0.5, (1), (1)].
    [("sum", None, (3 + 0.5) / 2), ("constant", 4.0, (3 / 4 + 0.5 / 4) / 2)],
)
def test_microbatch_step_length_normalizations(normalization, constant, expected):
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, _ = grpo_microbatch_train_step(
        log_probs, mask, 1, "reinforce_with_baseline", advantages=torch.ones(2, 1),
        length_normalization=normalization, normalize_constant=constant,
    )  # fmt: skip
    torch.testing.assert_close(loss, torch.tensor(expected))
    scale = 1.0 if constant is None else 1 / constant
    torch.testing.assert_close(log_probs.grad, -mask * scale / 2)


def test_constant_normalization_needs_its_constant():
    with pytest.raises(ValueError, match="normalize_constant > 0"):
        grpo_microbatch_train_step(
            torch.zeros(1, 2, requires_grad=True), torch.ones(1, 2), 1,
            "reinforce_with_baseline", advantages=torch.ones(1, 1),
            length_normalization="constant",
        )  # fmt: skip
