"""The statistics of an evaluation (pure): pass@k, majority vote, standard errors and 95% intervals.

Questions are the unit of sampling: a test set is a sample of questions, and the k answers to one
question are not independent of each other. So a per-question 0/1 outcome (a greedy answer, a
majority vote) gets a Wilson interval over questions, and a per-question fraction (the mean of k
sampled answers, the pass@k estimate) a percentile bootstrap over questions.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)  # 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over questions with its 95% interval and how the interval was made."""

    value: float
    low: float
    high: float
    method: str  # "wilson" or "bootstrap"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with `c` correct among `n` samples (Chen et al., 2021):
    the chance that `k` of the `n` samples, drawn without replacement, hold a correct one,
    1 - C(n - c, k) / C(n, k). Exact integers, one rounding at the division."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_P(correct_P_N: np.ndarray, k: int) -> np.ndarray:
    """pass@k of each question from its row of 0/1 outcomes."""
    n = correct_P_N.shape[1]
    return np.array([pass_at_k(n, int(c), k) for c in correct_P_N.sum(axis=1)])


def majority_correct(votes_N: Sequence[Hashable | None], correct_N: Sequence[float]) -> float:
    """1.0 when the most common answer (None, no answer, does not vote) is a correct one; a tie
    goes to the tied answer sampled first. No answer at all is wrong."""
    counts = Counter(v for v in votes_N if v is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winner = next(v for v in votes_N if v is not None and counts[v] == top)
    return float(next(c for v, c in zip(votes_N, correct_N, strict=True) if v == winner))


def standard_error(values_P: np.ndarray) -> float:
    """Standard error of the mean over questions, population std / sqrt(n): for 0/1 outcomes
    it is the binomial sqrt(p (1 - p) / n)."""
    values_P = np.asarray(values_P, dtype=np.float64)
    return float(values_P.std() / math.sqrt(len(values_P)))


def wilson_interval(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: stays inside [0, 1] and keeps its
    coverage near 0 and 1, where the normal approximation's does not."""
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0, got {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_means(
    values_P: np.ndarray, rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES
) -> np.ndarray:
    """Means of `resamples` resamples of the questions, with replacement."""
    values_P = np.asarray(values_P, dtype=np.float64)
    picks_B_P = rng.integers(0, len(values_P), size=(resamples, len(values_P)))
    return values_P[picks_B_P].mean(axis=1)


def percentile_interval(means_B: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(means_B, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def proportion_estimate(outcomes_P: np.ndarray) -> Estimate:
    """The mean of per-question 0/1 outcomes with its Wilson interval."""
    outcomes_P = np.asarray(outcomes_P)
    if not np.isin(outcomes_P, (0, 1)).all():
        raise ValueError("a Wilson interval is for 0/1 outcomes")
    low, high = wilson_interval(int(outcomes_P.sum()), len(outcomes_P))
    return Estimate(float(outcomes_P.mean()), low, high, "wilson")


def bootstrap_estimate(values_P: np.ndarray, rng: np.random.Generator) -> Estimate:
    """The mean of per-question values with its percentile bootstrap interval over questions."""
    low, high = percentile_interval(bootstrap_means(values_P, rng))
    return Estimate(float(np.mean(values_P)), low, high, "bootstrap")


def paired_difference(a_P: np.ndarray, b_P: np.ndarray, rng: np.random.Generator) -> Estimate:
    """mean(b) - mean(a) over the same questions, with a bootstrap interval that resamples
    questions (each keeps both of its values, so what the questions share cancels)."""
    a_P, b_P = np.asarray(a_P, dtype=np.float64), np.asarray(b_P, dtype=np.float64)
    if a_P.shape != b_P.shape:
        raise ValueError(f"paired values need the same questions, got {a_P.shape} and {b_P.shape}")
    return bootstrap_estimate(b_P - a_P, rng)
