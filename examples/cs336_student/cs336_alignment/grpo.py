"""A student's GRPO advantages, written as CS336 assignment 5 asks (no harness code)."""

from collections.abc import Callable

import torch


def compute_group_normalized_rewards(
    reward_fn: Callable[[str, str], dict[str, float]],
    rollout_responses: list[str],
    repeated_ground_truths: list[str],
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    scores = [
        reward_fn(r, g) for r, g in zip(rollout_responses, repeated_ground_truths, strict=True)
    ]
    raw_rewards = torch.tensor([s["reward"] for s in scores], dtype=torch.float32)
    grouped = raw_rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_by_std:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + advantage_eps)
    metadata = {"mean_reward": raw_rewards.mean().item(), "max_reward": raw_rewards.max().item()}
    return advantages.flatten(), raw_rewards, metadata
