"""Tinker's built-in losses as per-token functions (DESIGN section 3); pure torch.

Each returns the per-token loss, shape (B, T); the caller sums it over tokens and datums. Inputs
are the target logprobs under the current weights and the datum's `loss_fn_inputs`, all (B, T).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


def cross_entropy(target_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return -(target_logprobs * weights)


def importance_sampling(
    target_logprobs: torch.Tensor, logprobs: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    return -(torch.exp(target_logprobs - logprobs) * advantages)


def ppo(
    target_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low_threshold: float,
    clip_high_threshold: float,
) -> torch.Tensor:
    ratio = torch.exp(target_logprobs - logprobs)
    clipped_ratio = ratio.clamp(clip_low_threshold, clip_high_threshold)
    return -torch.minimum(ratio * advantages, clipped_ratio * advantages)


def cispo(
    target_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low_threshold: float,
    clip_high_threshold: float,
) -> torch.Tensor:
    clipped_ratio = torch.exp(target_logprobs - logprobs).clamp(
        clip_low_threshold, clip_high_threshold
    )
    return -(clipped_ratio.detach() * target_logprobs * advantages)


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., torch.Tensor]
    inputs: tuple[str, ...]
    config_defaults: Mapping[str, float] = field(default_factory=dict)


_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
_POLICY_INPUTS = ("target_tokens", "logprobs", "advantages")
LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(cross_entropy, ("target_tokens", "weights")),
    "importance_sampling": LossSpec(importance_sampling, _POLICY_INPUTS),
    "ppo": LossSpec(ppo, _POLICY_INPUTS, _CLIP),
    "cispo": LossSpec(cispo, _POLICY_INPUTS, _CLIP),
}


def resolve(
    loss_fn: str, loss_fn_config: Mapping[str, float | str] | None
) -> tuple[LossSpec, dict[str, float]]:
    """The loss named `loss_fn` and its full config, or a ValueError naming what is wrong."""
    if loss_fn not in LOSSES:
        raise ValueError(
            f"unknown loss_fn {loss_fn!r}; the local backend implements {sorted(LOSSES)}"
        )
    spec = LOSSES[loss_fn]
    config = dict(loss_fn_config or {})
    unknown = sorted(set(config) - set(spec.config_defaults))
    if unknown:
        raise ValueError(
            f"loss_fn_config keys {unknown} are not options of {loss_fn!r}"
            f" (it takes {sorted(spec.config_defaults) or 'none'})"
        )
    resolved = {**spec.config_defaults, **{k: float(v) for k, v in config.items()}}
    if "clip_low_threshold" in resolved and not (
        0 <= resolved["clip_low_threshold"] <= resolved["clip_high_threshold"]
    ):
        raise ValueError(
            "need 0 <= clip_low_threshold <= clip_high_threshold (absolute ratio bounds),"
            f" got {resolved['clip_low_threshold']} and {resolved['clip_high_threshold']}"
        )
    return spec, resolved


def per_token_loss(
    spec: LossSpec,
    config: Mapping[str, float],
    target_logprobs: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """The loss of every target position, from the inputs `spec` names (minus the targets)."""
    arguments = {key: inputs[key] for key in spec.inputs if key != "target_tokens"}
    return spec.fn(target_logprobs, **arguments, **config)


def selected_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] of the raw (untempered, unfiltered) logits, in float32.

    Training and sampling both use this, so sampler logprobs equal `forward` logprobs.
    """
    logits = logits.float()
    chosen = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)
