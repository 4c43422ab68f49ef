"""Invariants of the GRPO math, checked on generated inputs.

Exact invariants are checked in float64 on rewards that are multiples of 1/8, so shifts and
scalings are computed exactly and only the normalization's own rounding remains; the realistic
float32 GSM8K rewards get their own checks.
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.grpo import (
    compute_group_normalized_rewards,
    compute_grpo_clip_loss,
    group_normalized_advantages,
)

FAST = settings(max_examples=60, deadline=None)
GSM8K_REWARDS = (0.0, 0.2, 0.8, 1.0)


EIGHTHS = st.integers(-800, 800).map(lambda n: n / 8)


@st.composite
def reward_groups(draw, values=EIGHTHS):
    """A float64 (P, G) reward array, G >= 2."""
    num_problems = draw(st.integers(1, 5))
    group_size = draw(st.integers(2, 8))
    rows = draw(
        st.lists(
            st.lists(values, min_size=group_size, max_size=group_size),
            min_size=num_problems,
            max_size=num_problems,
        )
    )
    return torch.tensor(rows, dtype=torch.float64)


def varied(rewards_P_G: torch.Tensor) -> bool:
    return bool((rewards_P_G.amax(dim=1) > rewards_P_G.amin(dim=1)).all())


@FAST
@given(reward_groups(), st.booleans(), st.sampled_from([0.0, 1e-6, 1e-2]))
def test_advantages_sum_to_zero_in_every_group(rewards_P_G, normalize_by_std, eps):
    if eps == 0.0 and not varied(rewards_P_G):
        eps = 1e-6  # eps = 0 divides a constant group by zero
    advantages_P_G = group_normalized_advantages(rewards_P_G, eps, normalize_by_std)
    torch.testing.assert_close(
        advantages_P_G.sum(dim=1), torch.zeros(len(rewards_P_G), dtype=torch.float64)
    )


@FAST
@given(st.data(), st.integers(1, 4), st.integers(2, 8), st.booleans())
def test_realistic_rewards_sum_to_zero_through_the_cs336_api(
    data, num_problems, group_size, normalize_by_std
):
    rewards = data.draw(
        st.lists(
            st.sampled_from(GSM8K_REWARDS),
            min_size=num_problems * group_size,
            max_size=num_problems * group_size,
        )
    )
    advantages, raw_rewards, _ = compute_group_normalized_rewards(
        lambda response, truth: {"reward": float(response)},
        [str(r) for r in rewards],
        ["-"] * len(rewards),
        group_size,
        1e-6,
        normalize_by_std,
    )
    assert raw_rewards.tolist() == [torch.tensor(r).item() for r in rewards]
    sums_P = advantages.view(num_problems, group_size).sum(dim=1)
    torch.testing.assert_close(sums_P, torch.zeros(num_problems), atol=1e-5, rtol=0)


@FAST
@given(reward_groups(), EIGHTHS, st.booleans())
def test_shifting_a_group_changes_no_advantage(rewards_P_G, shift, normalize_by_std):
    shifted_P_G = rewards_P_G.clone()
    shifted_P_G[0] += shift
    before = group_normalized_advantages(rewards_P_G, 1e-6, normalize_by_std)
    after = group_normalized_advantages(shifted_P_G, 1e-6, normalize_by_std)
    torch.testing.assert_close(after, before, atol=1e-9, rtol=1e-9)


@FAST
@given(reward_groups(), st.floats(0.01, 100.0))
def test_scaling_a_varied_group_changes_no_std_normalized_advantage(rewards_P_G, scale):
    if not varied(rewards_P_G):
        rewards_P_G[:, 0] += 1.0  # break ties so every group has nonzero variance
    before = group_normalized_advantages(rewards_P_G, 0.0, True)
    after = group_normalized_advantages(rewards_P_G * scale, 0.0, True)
    torch.testing.assert_close(after, before, atol=1e-9, rtol=1e-9)


@FAST
@given(reward_groups(), st.floats(0.01, 100.0), st.sampled_from([1e-6, 1e-2]))
def test_eps_bounds_how_much_scaling_moves_advantages(rewards_P_G, scale, eps):
    # (r - m) / (s + eps) against c (r - m) / (c s + eps) differ by exactly
    # |r - m| * eps * |c - 1| / ((c s + eps)(s + eps)).
    centered_P_G = rewards_P_G - rewards_P_G.mean(dim=1, keepdim=True)
    std_P_1 = rewards_P_G.std(dim=1, keepdim=True)
    bound_P_G = (
        centered_P_G.abs() * eps * abs(scale - 1) / ((scale * std_P_1 + eps) * (std_P_1 + eps))
    )
    before = group_normalized_advantages(rewards_P_G, eps, True)
    after = group_normalized_advantages(rewards_P_G * scale, eps, True)
    assert ((after - before).abs() <= bound_P_G + 1e-9).all()


@FAST
@given(
    st.floats(-1e6, 1e6, width=32),
    st.integers(1, 16),
    st.booleans(),
    st.sampled_from([0.0, 1e-6]),
)
def test_a_constant_group_has_exactly_zero_advantages(value, group_size, normalize_by_std, eps):
    if normalize_by_std and group_size < 2:
        group_size = 2
    rewards_P_G = torch.full((3, group_size), value, dtype=torch.float32)
    advantages_P_G = group_normalized_advantages(rewards_P_G, eps, normalize_by_std)
    assert advantages_P_G.eq(0).all()


@FAST
@given(
    st.floats(0.05, 0.5),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
    st.floats(-3.0, 3.0),
    st.floats(-8.0, 0.0),
)
def test_clipping_is_inactive_when_every_ratio_is_inside_the_range(
    cliprange, positions, advantage, old_log_prob
):
    # Ratios kept a margin inside [1 - c, 1 + c] so rounding in log/exp cannot leave the range.
    low, high = 1 - cliprange + 1e-3, 1 + cliprange - 1e-3
    ratio_1_T = torch.tensor([[low + p * (high - low) for p in positions]], dtype=torch.float64)
    old_1_T = torch.full_like(ratio_1_T, old_log_prob)
    policy_1_T = old_1_T + ratio_1_T.log()
    advantages = torch.tensor([[advantage]], dtype=torch.float64)
    loss_1_T, metadata = compute_grpo_clip_loss(advantages, policy_1_T, old_1_T, cliprange)
    torch.testing.assert_close(loss_1_T, -ratio_1_T * advantage)
    assert not metadata["clipped"].any()
    assert math.isclose(metadata["ratio"].sum().item(), ratio_1_T.sum().item(), rel_tol=1e-9)
