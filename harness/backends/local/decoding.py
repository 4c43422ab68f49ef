"""Next-token choice for a batch of rows, each with its own sampling parameters (pure torch).

Randomness is counter-based: row r's uniform at step t is a hash of (its key, t), where the key
hashes (seed, sample index). A seeded request therefore gets the same draws whatever else shares
its batch, however the batch is split, and whichever rows have already finished; its tokens are
the same too unless the batch's shape moves a logit, by float rounding, across a draw's boundary.
"""

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_keys(seed: int, sample_indices: np.ndarray) -> np.ndarray:
    """One 64-bit key per sample of a request with this seed."""
    seed_key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    return _splitmix64(seed_key ^ sample_indices.astype(np.uint64))


def row_uniforms(keys_R: np.ndarray, step: int) -> np.ndarray:
    """A uniform in [0, 1) per row for this step, from 53 bits of the hash."""
    step_key = _splitmix64(np.array([step], dtype=np.uint64))
    bits = _splitmix64(keys_R ^ step_key) >> np.uint64(11)
    return bits.astype(np.float64) * 2.0**-53


def _inverse_cdf(probs_R_V: torch.Tensor, uniforms_R: torch.Tensor) -> torch.Tensor:
    """The index where each row's cumulative probability first exceeds u * total."""
    cdf_R_V = probs_R_V.cumsum(-1)
    targets_R_1 = (uniforms_R * cdf_R_V[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf_R_V, targets_R_1, right=True).squeeze(-1)


def _sample_plain(logits_R_V, temperature_R, uniforms_R) -> torch.Tensor:
    probs_R_V = torch.softmax(logits_R_V.double() / temperature_R.unsqueeze(-1), dim=-1)
    return _inverse_cdf(probs_R_V, uniforms_R)


def _sample_filtered(logits_R_V, temperature_R, top_k_R, top_p_R, uniforms_R) -> torch.Tensor:
    """Top-k, then top-p on the renormalised top-k distribution, in descending-logit order."""
    vocab = logits_R_V.shape[-1]
    k_R = torch.where(top_k_R > 0, top_k_R.clamp(max=vocab), vocab)
    values_R_K, indices_R_K = logits_R_V.topk(int(k_R.max()), dim=-1, sorted=True)
    ranks_K = torch.arange(values_R_K.shape[-1], device=logits_R_V.device)
    scaled_R_K = (values_R_K.double() / temperature_R.unsqueeze(-1)).masked_fill(
        ranks_K >= k_R.unsqueeze(-1), float("-inf")
    )
    probs_R_K = torch.softmax(scaled_R_K, dim=-1)
    mass_before_R_K = probs_R_K.cumsum(-1) - probs_R_K
    probs_R_K = probs_R_K.masked_fill(mass_before_R_K >= top_p_R.unsqueeze(-1), 0.0)
    choice_R = _inverse_cdf(probs_R_K, uniforms_R)
    return indices_R_K.gather(-1, choice_R.unsqueeze(-1)).squeeze(-1)


def next_tokens(
    logits_R_V: torch.Tensor,
    temperature_R: torch.Tensor,
    top_k_R: torch.Tensor,
    top_p_R: torch.Tensor,
    uniforms_R: torch.Tensor,
) -> torch.Tensor:
    """Greedy where temperature is 0; else a draw from the tempered (and filtered) softmax."""
    tokens_R = logits_R_V.argmax(-1)
    sampled_R = temperature_R > 0
    filtered_R = sampled_R & ((top_k_R > 0) | (top_p_R < 1))
    # Each row takes the path its own parameters choose, never its neighbours'.
    plain = (sampled_R & ~filtered_R).nonzero().squeeze(-1)
    if plain.numel():
        tokens_R[plain] = _sample_plain(logits_R_V[plain], temperature_R[plain], uniforms_R[plain])
    filtered = filtered_R.nonzero().squeeze(-1)
    if filtered.numel():
        tokens_R[filtered] = _sample_filtered(
            logits_R_V[filtered],
            temperature_R[filtered],
            top_k_R[filtered],
            top_p_R[filtered],
            uniforms_R[filtered],
        )
    return tokens_R
