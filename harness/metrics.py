"""Per-step statistics (pure): rewards, groups, lengths, and how far trainer and sampler disagree.

Keys follow the original README (`reward/mean`, ...) and W&B's `section/name` convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from harness.grpo import compute_grpo_clip_loss


def without_timings(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall-clock timings (`time/*`): what two runs of the same
    config must agree on."""
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def reward_metrics(
    rewards_P_G: np.ndarray, format_P_G: np.ndarray, answer_P_G: np.ndarray
) -> dict[str, float]:
    return {
        "reward/mean": float(rewards_P_G.mean()),
        "reward/std": float(rewards_P_G.std()),
        "reward/min": float(rewards_P_G.min()),
        "reward/max": float(rewards_P_G.max()),
        "reward/format_mean": float(format_P_G.mean()),
        "reward/answer_mean": float(answer_P_G.mean()),
    }


def length_metrics(lengths_P_G: np.ndarray, truncated_P_G: np.ndarray) -> dict[str, float]:
    return {
        "response/length_mean": float(lengths_P_G.mean()),
        "response/length_max": float(lengths_P_G.max()),
        "response/truncated_frac": float(truncated_P_G.mean()),
    }


def policy_metrics(
    sampler_logprobs_D: Sequence[np.ndarray],
    trainer_logprobs_D: Sequence[np.ndarray],
    advantages_D: Sequence[float],
    cliprange: float,
) -> dict[str, float]:
    """Sampler-vs-trainer agreement on the trained tokens, before the update.

    On-policy, the ratio is 1 up to numerics; a KL or clip fraction far from 0 means the sampler
    and the trainer disagree (stale weights, misaligned tokens, a tokenizer mismatch).
    `kl_sampler_trainer` is the k1 estimate of KL(sampler || trainer) over sampled tokens.
    """
    if not sampler_logprobs_D:
        return {}
    sampler_T = np.concatenate(sampler_logprobs_D).astype(np.float64)
    trainer_T = np.concatenate(trainer_logprobs_D).astype(np.float64)
    advantage_T = np.repeat(advantages_D, [len(lp) for lp in sampler_logprobs_D])
    # One row per token (the clip is decided token by token), the trainer as the policy and the
    # sampler as the old policy, exactly as the ppo loss sees them.
    _, clip = compute_grpo_clip_loss(
        torch.from_numpy(advantage_T)[:, None],
        torch.from_numpy(trainer_T)[:, None],
        torch.from_numpy(sampler_T)[:, None],
        cliprange,
    )
    ratio_T = clip["ratio"].numpy()
    return {
        "train/kl_sampler_trainer": float((sampler_T - trainer_T).mean()),
        "train/ratio_mean": float(ratio_T.mean()),
        "train/ratio_min": float(ratio_T.min()),
        "train/ratio_max": float(ratio_T.max()),
        "train/clip_frac": float(clip["clipped"].float().mean()),
        "train/tokens": float(len(sampler_T)),
    }
