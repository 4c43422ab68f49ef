"""The GRPO math: group-normalized advantages and per-token policy-gradient losses.

Names, signatures and semantics follow Stanford CS336 (spring 2025) assignment 5, so code
written against that assignment's `tests/adapters.py` can call these functions unchanged.
Shapes: B sequences, T tokens, P problems, G group members.
"""

from collections.abc import Sequence
from typing import Literal

import torch

from harness.rewards import RewardFn

LossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip"]
LOSS_TYPES: tuple[LossType, ...] = (
    "grpo_clip",
    "grpo_no_clip",
    "reinforce_with_baseline",
    "no_baseline",
)
# How a response's per-token losses combine into its loss: their sum, their mean over the
# response (masked_mean), or their sum over a constant (masked_normalize, Dr. GRPO).
LengthNormalization = Literal["sum", "sequence_mean", "constant"]


def zero_variance_groups(rewards_P_G: torch.Tensor) -> torch.Tensor:
    """Which groups (rows) hold a single reward value, shape (P,)."""
    return rewards_P_G.amax(dim=1) == rewards_P_G.amin(dim=1)


def group_normalized_advantages(
    rewards_P_G: torch.Tensor, advantage_eps: float, normalize_by_std: bool
) -> torch.Tensor:
    """A = r - mean(group), divided by std(group) + eps (n-1 estimator) when asked; (P, G)."""
    if rewards_P_G.ndim != 2 or rewards_P_G.shape[1] < 1:
        raise ValueError(f"rewards_P_G must have shape (P, G) with G >= 1, got {rewards_P_G.shape}")
    if normalize_by_std and rewards_P_G.shape[1] < 2:
        raise ValueError("normalize_by_std needs group_size >= 2: the n-1 std of one reward is NaN")
    if not rewards_P_G.is_floating_point():
        rewards_P_G = rewards_P_G.to(torch.float32)
    if not torch.isfinite(rewards_P_G).all():
        raise ValueError("rewards must be finite")
    advantages_P_G = rewards_P_G - rewards_P_G.mean(dim=1, keepdim=True)
    if normalize_by_std:
        advantages_P_G = advantages_P_G / (rewards_P_G.std(dim=1, keepdim=True) + advantage_eps)
    # Rounding in the mean leaves many constant float32 groups with one-ulp residues, which
    # the division by (std ~ 1e-8) + eps inflates to advantages of order 1e-2.
    return advantages_P_G.masked_fill(zero_variance_groups(rewards_P_G)[:, None], 0.0)


def reward_metadata(
    scores: Sequence[dict[str, float]], rewards_P_G: torch.Tensor
) -> dict[str, float]:
    """Batch statistics of the rewards worth logging (floats)."""
    metadata = {
        "reward_mean": rewards_P_G.mean().item(),
        "reward_std": rewards_P_G.std(correction=0).item(),
        "reward_max": rewards_P_G.max().item(),
        "reward_min": rewards_P_G.min().item(),
        "frac_zero_variance_groups": zero_variance_groups(rewards_P_G).float().mean().item(),
    }
    for key in ("format_reward", "answer_reward"):
        if all(key in score for score in scores):
            metadata[f"{key}_mean"] = sum(float(score[key]) for score in scores) / len(scores)
    return metadata


def compute_group_normalized_rewards(
    reward_fn: RewardFn,
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[str],
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Score each response and normalize within consecutive groups of `group_size`.

    Returns (advantages, raw_rewards, metadata); both tensors have shape (rollout_batch_size,).
    """
    if len(rollout_responses) != len(repeated_ground_truths):
        raise ValueError(
            f"{len(rollout_responses)} responses but {len(repeated_ground_truths)} ground truths"
        )
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not rollout_responses or len(rollout_responses) % group_size:
        raise ValueError(
            f"the number of responses ({len(rollout_responses)}) must be a positive multiple"
            f" of group_size ({group_size})"
        )
    scores = [
        reward_fn(response, truth)
        for response, truth in zip(rollout_responses, repeated_ground_truths, strict=True)
    ]
    raw_rewards = torch.tensor([float(score["reward"]) for score in scores], dtype=torch.float32)
    rewards_P_G = raw_rewards.view(-1, group_size)
    advantages_P_G = group_normalized_advantages(rewards_P_G, advantage_eps, normalize_by_std)
    return advantages_P_G.reshape(-1), raw_rewards, reward_metadata(scores, rewards_P_G)


def _check_per_sequence(name: str, values_B_1: torch.Tensor, log_probs_B_T: torch.Tensor) -> None:
    # A (B,) tensor would broadcast against (B, T) along the wrong axis without complaint.
    if values_B_1.shape != (log_probs_B_T.shape[0], 1):
        raise ValueError(
            f"{name} must have shape (batch_size, 1) = ({log_probs_B_T.shape[0]}, 1),"
            f" got {tuple(values_B_1.shape)}"
        )


def _check_same_shape(old_log_probs: torch.Tensor, policy_log_probs: torch.Tensor) -> None:
    if old_log_probs.shape != policy_log_probs.shape:
        raise ValueError(
            f"old_log_probs shape {tuple(old_log_probs.shape)} differs from"
            f" policy_log_probs shape {tuple(policy_log_probs.shape)}"
        )


def compute_naive_policy_gradient_loss(
    raw_rewards_or_advantages: torch.Tensor, policy_log_probs: torch.Tensor
) -> torch.Tensor:
    """Per-token REINFORCE loss -A * log pi, shape (B, T); A has shape (B, 1)."""
    _check_per_sequence("raw_rewards_or_advantages", raw_rewards_or_advantages, policy_log_probs)
    return -raw_rewards_or_advantages * policy_log_probs


def compute_grpo_clip_loss(
    advantages: torch.Tensor,
    policy_log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token -min(ratio * A, clip(ratio, 1 - c, 1 + c) * A), shape (B, T).

    metadata: "clipped" (bool, B x T) marks tokens where the clipped objective was the smaller
    one, i.e. where the clip decided the loss; "ratio" is pi / pi_old (detached).
    """
    _check_per_sequence("advantages", advantages, policy_log_probs)
    _check_same_shape(old_log_probs, policy_log_probs)
    if cliprange < 0:
        raise ValueError(f"cliprange must be >= 0, got {cliprange}")
    ratio_B_T = torch.exp(policy_log_probs - old_log_probs)
    unclipped_B_T = ratio_B_T * advantages
    clipped_B_T = torch.clamp(ratio_B_T, 1 - cliprange, 1 + cliprange) * advantages
    loss_B_T = -torch.minimum(unclipped_B_T, clipped_B_T)
    return loss_B_T, {"clipped": clipped_B_T < unclipped_B_T, "ratio": ratio_B_T.detach()}


def compute_grpo_no_clip_loss(
    advantages: torch.Tensor, policy_log_probs: torch.Tensor, old_log_probs: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token -ratio * A with the unclipped ratio pi / pi_old, shape (B, T): the
    assignment's GRPO without clipping. metadata: "ratio" (detached)."""
    _check_per_sequence("advantages", advantages, policy_log_probs)
    _check_same_shape(old_log_probs, policy_log_probs)
    ratio_B_T = torch.exp(policy_log_probs - old_log_probs)
    return -ratio_B_T * advantages, {"ratio": ratio_B_T.detach()}


def _require(loss_type: str, **arguments: object) -> None:
    missing = [name for name, value in arguments.items() if value is None]
    if missing:
        raise ValueError(f"loss_type={loss_type!r} requires {', '.join(missing)}")


def compute_policy_gradient_loss(
    policy_log_probs: torch.Tensor,
    loss_type: LossType,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss (B, T) of the chosen kind, and its metadata."""
    if loss_type == "no_baseline":
        _require(loss_type, raw_rewards=raw_rewards)
        return compute_naive_policy_gradient_loss(raw_rewards, policy_log_probs), {}
    if loss_type == "reinforce_with_baseline":
        _require(loss_type, advantages=advantages)
        return compute_naive_policy_gradient_loss(advantages, policy_log_probs), {}
    if loss_type == "grpo_clip":
        _require(loss_type, advantages=advantages, old_log_probs=old_log_probs, cliprange=cliprange)
        return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange)
    if loss_type == "grpo_no_clip":
        _require(loss_type, advantages=advantages, old_log_probs=old_log_probs)
        return compute_grpo_no_clip_loss(advantages, policy_log_probs, old_log_probs)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def _kept(tensor: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensor with unmasked entries zeroed, and the mask as bool."""
    if mask.shape != tensor.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from {tuple(tensor.shape)}")
    keep = mask.bool()
    # where(), not multiplication: masked-out entries may be inf or NaN (e.g. padding).
    return torch.where(keep, tensor, 0), keep


def masked_mean(tensor: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over `dim` (all entries if None) of the entries where mask is nonzero."""
    kept, keep = _kept(tensor, mask)
    return kept.sum(dim=dim) / keep.sum(dim=dim)


def masked_normalize(
    tensor: torch.Tensor, mask: torch.Tensor, normalize_constant: float, dim: int | None = None
) -> torch.Tensor:
    """Sum over `dim` (all entries if None) of the masked entries, divided by a constant."""
    kept, _ = _kept(tensor, mask)
    return kept.sum(dim=dim) / normalize_constant


def sequence_losses(
    loss_B_T: torch.Tensor,
    response_mask: torch.Tensor,
    length_normalization: LengthNormalization,
    normalize_constant: float | None = None,
) -> torch.Tensor:
    """Each response's loss from its per-token losses, shape (B,)."""
    if length_normalization == "sequence_mean":
        return masked_mean(loss_B_T, response_mask, dim=-1)
    if length_normalization == "sum":
        return masked_normalize(loss_B_T, response_mask, 1.0, dim=-1)
    if length_normalization == "constant":
        if normalize_constant is None or not normalize_constant > 0:
            raise ValueError(f"constant length normalization needs normalize_constant > 0, got"
                             f" {normalize_constant}")  # fmt: skip
        return masked_normalize(loss_B_T, response_mask, normalize_constant, dim=-1)
    raise ValueError(
        f"unknown length_normalization {length_normalization!r}; expected sum, sequence_mean"
        " or constant"
    )


def grpo_microbatch_train_step(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: int,
    loss_type: LossType,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
    length_normalization: LengthNormalization = "sequence_mean",
    normalize_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one microbatch, backpropagated: the per-token loss combined over each response
    (by default averaged, masked_mean; "constant": masked_normalize by `normalize_constant`;
    "sum": summed), then averaged over the batch and divided by gradient_accumulation_steps.
    Returns (loss, metadata)."""
    if gradient_accumulation_steps < 1:
        raise ValueError(
            f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}"
        )
    if not response_mask.bool().any(dim=-1).all():
        raise ValueError("every sequence needs at least one response token in response_mask")
    loss_B_T, metadata = compute_policy_gradient_loss(
        policy_log_probs, loss_type, raw_rewards, advantages, old_log_probs, cliprange
    )
    loss = (
        sequence_losses(loss_B_T, response_mask, length_normalization, normalize_constant).mean()
        / gradient_accumulation_steps
    )
    loss.backward()
    if "clipped" in metadata:
        metadata["clip_fraction"] = masked_mean(metadata["clipped"].float(), response_mask)
    return loss.detach(), metadata
