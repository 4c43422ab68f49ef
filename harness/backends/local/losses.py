"""Tinker's built-in losses as per-token functions (docs/DESIGN.md §3); pure torch.

Each returns the per-token loss, shape (B, T); the caller sums it over tokens and datums. Inputs
are the target logprobs under the current weights and the datum's `loss_fn_inputs`, all (B, T),
right-padded with zeros (a row is one Datum). Formulas follow Tinker's documentation, "Loss
Functions" (tinker-docs.thinkingmachines.ai/tinker/losses/ and its page for each loss).
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


def dro(
    target_logprobs: torch.Tensor, logprobs: torch.Tensor, advantages: torch.Tensor, beta: float
) -> torch.Tensor:
    """DRO (docs: losses/dro): -(log p * A - beta/2 * (log p - log q)^2), per token."""
    return -(target_logprobs * advantages - 0.5 * beta * (target_logprobs - logprobs) ** 2)


def gspo(
    target_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    sequence_ratio_mask: torch.Tensor,
    clip_low_threshold: float,
    clip_high_threshold: float,
) -> torch.Tensor:
    """GSPO-token (docs: losses/gspo): each token's ratio has the value of its Datum's sequence
    ratio, exp(mean log(p/q) over the tokens `sequence_ratio_mask` marks), and the gradient of
    its own log p; then PPO's clipped objective with it."""
    in_ratio_B_T = (sequence_ratio_mask != 0).to(target_logprobs.dtype)
    marked_B = in_ratio_B_T.sum(-1)
    if (marked_B == 0).any():
        raise ValueError("gspo needs sequence_ratio_mask to mark at least one token of each Datum")
    log_ratio_B = ((target_logprobs.detach() - logprobs) * in_ratio_B_T).sum(-1) / marked_B
    ratio = torch.exp(log_ratio_B[:, None] + target_logprobs - target_logprobs.detach())
    clipped_ratio = ratio.clamp(clip_low_threshold, clip_high_threshold)
    return -torch.minimum(ratio * advantages, clipped_ratio * advantages)


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., torch.Tensor]
    inputs: tuple[str, ...]
    config_defaults: Mapping[str, float] = field(default_factory=dict)
    required_config: tuple[str, ...] = ()  # options without a documented default


_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
_POLICY_INPUTS = ("target_tokens", "logprobs", "advantages")
LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(cross_entropy, ("target_tokens", "weights")),
    "importance_sampling": LossSpec(importance_sampling, _POLICY_INPUTS),
    "ppo": LossSpec(ppo, _POLICY_INPUTS, _CLIP),
    "cispo": LossSpec(cispo, _POLICY_INPUTS, _CLIP),
    "dro": LossSpec(dro, _POLICY_INPUTS, required_config=("beta",)),
    "gspo": LossSpec(gspo, (*_POLICY_INPUTS, "sequence_ratio_mask"), _CLIP),
    # StableReinforce (docs: losses/stable-reinforce, "Alpha") is published as a REINFORCE
    # variant that stays stable when the sampling policy differs from the trained one, using
    # what the sampler records (record_stability_info=True) for the sequences a Datum's
    # provenance names; its formula, what is recorded, and its option `kl_coeff` (named in
    # SDK 0.38's ForwardBackwardInput) are not published. Here it is REINFORCE with the
    # importance ratio to the sampler's logprobs, as importance_sampling: the one thing this
    # backend's sampler knows of a sequence is its logprobs, and the Datum's `logprobs` are
    # them (sampling and training share numerics), so nothing is recorded or looked up. It
    # takes no options, so `kl_coeff` is refused.
    "stable_reinforce": LossSpec(importance_sampling, _POLICY_INPUTS),
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
    options = {*spec.config_defaults, *spec.required_config}
    unknown = sorted(set(config) - options)
    if unknown:
        raise ValueError(
            f"loss_fn_config keys {unknown} are not options of {loss_fn!r}"
            f" (it takes {sorted(options) or 'none'})"
        )
    missing = [key for key in spec.required_config if key not in config]
    if missing:
        raise ValueError(
            f"loss_fn {loss_fn!r} needs loss_fn_config {missing}"
            f" (e.g. loss_fn_config={{{missing[0]!r}: 0.05}})"
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
