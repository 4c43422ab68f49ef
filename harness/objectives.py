"""CS336's loss types and length normalisations, each realised exactly through a Tinker
built-in loss (pure).

Tinker's built-in losses sum a per-token loss over every target of every Datum
(https://tinker-docs.thinkingmachines.ai/tinker/losses/, read 2026-12-01):

- `cross_entropy`: -(target_logprobs * weights), inputs `target_tokens`, `weights`;
- `importance_sampling`: -(exp(target_logprobs - logprobs) * advantages);
- `ppo`: -min(ratio * advantages, clip(ratio, low, high) * advantages), `logprobs` the sampler's.

The assignment's losses map onto them as follows (`harness.grpo` holds the reference):

- `grpo_clip` -> `ppo` with thresholds 1 -/+ cliprange, the advantages per token;
- `grpo_no_clip` -> `importance_sampling`, the advantages per token (the unclipped ratio);
- `reinforce_with_baseline` -> `cross_entropy` with signed `weights` = the advantages: its
  gradient is -A * grad log pi whatever policy sampled the tokens, the assignment's
  `compute_naive_policy_gradient_loss` on and off policy. The documented formula is linear in
  the weights and states no sign restriction;
- `no_baseline` -> the same with the raw rewards as weights.

Length normalisation scales each response's per-token values by a positive number s (1 for
`sum`, 1 / its length for `sequence_mean`, 1 / sampling_max_tokens for `constant`). That is
exact for all three losses: `cross_entropy` and `importance_sampling` are linear in their
per-token values, and for s > 0, min(r * s A, clip(r) * s A) = s * min(r A, clip(r) A). Tinker's
sum over the T responses of an optimizer step is then T times the assignment's batch mean
(`grpo_microbatch_train_step` with one accumulation step), a constant that Adam's update is
invariant to up to its epsilon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from harness.grpo import LengthNormalization, LossType

SignalInput = Literal["advantages", "weights"]


@dataclasses.dataclass(frozen=True)
class TinkerLoss:
    """The built-in loss a loss type trains with, and the Datum input that carries its
    per-token signal (`weights` for cross_entropy, `advantages` for the ratio losses)."""

    loss_fn: str
    loss_fn_config: dict[str, float] | None
    signal_input: SignalInput


def tinker_loss(loss_type: LossType, cliprange: float) -> TinkerLoss:
    if loss_type == "grpo_clip":
        clip = {"clip_low_threshold": 1 - cliprange, "clip_high_threshold": 1 + cliprange}
        return TinkerLoss("ppo", clip, "advantages")
    if loss_type == "grpo_no_clip":
        return TinkerLoss("importance_sampling", None, "advantages")
    if loss_type in ("reinforce_with_baseline", "no_baseline"):
        return TinkerLoss("cross_entropy", None, "weights")
    raise ValueError(f"unknown loss_type {loss_type!r}")


def sequence_scales(
    lengths_P_G: np.ndarray, length_normalization: LengthNormalization, max_tokens: int
) -> np.ndarray:
    """Each response's positive scale, (P, G): its per-token values are multiplied by it."""
    lengths_P_G = np.asarray(lengths_P_G, dtype=np.float64)
    if length_normalization == "sum":
        return np.ones_like(lengths_P_G)
    if length_normalization == "sequence_mean":
        # An empty response trains on nothing (it has no Datum); its scale is never used.
        return 1.0 / np.maximum(lengths_P_G, 1.0)
    if length_normalization == "constant":
        return np.full_like(lengths_P_G, 1.0 / max_tokens)
    raise ValueError(f"unknown length_normalization {length_normalization!r}")


def training_signal(
    loss_type: LossType,
    advantages_P_G: np.ndarray,
    rewards_P_G: np.ndarray,
    lengths_P_G: np.ndarray,
    length_normalization: LengthNormalization,
    max_tokens: int,
) -> np.ndarray:
    """Each response's per-token value, (P, G) float32: the advantage (raw reward for
    no_baseline) times the response's length scale. Exactly the advantages for the defaults."""
    signal_P_G = np.asarray(rewards_P_G if loss_type == "no_baseline" else advantages_P_G)
    if length_normalization == "sum":
        return signal_P_G.astype(np.float32)
    scales = sequence_scales(lengths_P_G, length_normalization, max_tokens)
    return (signal_P_G * scales).astype(np.float32)


def optimizer_steps(
    sources_D: Sequence[tuple[int, int]],
    group_size: int,
    train_batch_size: int,
    epochs: int,
) -> list[list[int]]:
    """The Datums (indices) of each optimizer step of a rollout batch: per epoch, the
    consecutive minibatches of `train_batch_size` rollouts in (problem, member) order. A
    minibatch whose rollouts carry no Datum (no signal) takes no step."""
    minibatches: dict[int, list[int]] = {}
    for d, (p, g) in enumerate(sources_D):
        minibatches.setdefault((p * group_size + g) // train_batch_size, []).append(d)
    return [minibatches[k] for _ in range(epochs) for k in sorted(minibatches)]
