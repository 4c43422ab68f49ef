"""Evaluation statistics: pass@k by hand and by enumeration, majority votes, and intervals that
cover what they claim to in seeded simulations."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import stats


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # pass@1 is the fraction correct
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (3, 0, 3, 0.0),  # nothing correct
        (3, 1, 3, 1.0),  # every sample drawn
        (8, 5, 4, 1.0),  # fewer wrong samples than draws: a correct one is always drawn
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert stats.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(("n", "c"), [(5, 2), (6, 1), (7, 4)])
def test_pass_at_k_is_the_chance_that_k_of_the_n_samples_hold_a_correct_one(n, c):
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        exact = Fraction(sum(any(subset) for subset in subsets), len(subsets))
        assert stats.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-15)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_pass_at_k_rises_with_k_from_the_accuracy_and_stays_within_0_and_1(n_c):
    n, c = n_c
    curve = [stats.pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert curve[0] == pytest.approx(c / n, abs=1e-15)
    assert all(0.0 <= p <= 1.0 for p in curve)
    assert all(a <= b for a, b in itertools.pairwise(curve))


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(3, 4, 1), (3, 1, 4), (3, 1, 0), (3, -1, 1)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            stats.pass_at_k(n, c, k)


def test_pass_at_k_per_question():
    correct_P_N = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(stats.pass_at_k_P(correct_P_N, 2), [0.5, 5 / 6, 0.0])


@pytest.mark.parametrize(
    ("votes", "correct", "expected"),
    [
        ([36, 36, 12], [1, 1, 0], 1.0),
        ([12, 36, 12], [0, 1, 0], 0.0),
        ([None, None, 36], [0, 0, 1], 1.0),  # no answer does not vote
        ([12, 36, 36, 12], [0, 1, 1, 0], 0.0),  # a tie goes to the answer sampled first
        ([36, 12, 12, 36], [1, 0, 0, 1], 1.0),
        ([None, None], [0, 0], 0.0),
    ],
)
def test_majority_vote(votes, correct, expected):
    assert stats.majority_correct(votes, correct) == expected


def test_standard_error_of_proportions_is_the_binomial_one():
    outcomes = np.array([1] * 57 + [0] * 43)
    assert stats.standard_error(outcomes) == pytest.approx(math.sqrt(0.57 * 0.43 / 100))


def test_wilson_interval_by_hand():
    # 0 of 10: the upper end is z^2 / (n + z^2); 5 of 10 is symmetric about 1/2.
    z2 = stats.Z**2
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    low, high = stats.wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert abs(stats.Z - 1.959964) < 1e-6


@pytest.mark.parametrize("p", [0.05, 0.57, 0.86])
def test_wilson_intervals_cover_the_true_proportion_95_percent_of_the_time(p):
    rng = np.random.default_rng(13)
    n, repeats = 200, 2000
    hits = sum(
        low <= p <= high
        for low, high in (stats.wilson_interval(int(s), n) for s in rng.binomial(n, p, repeats))
    )
    assert 0.93 <= hits / repeats <= 0.97


def test_bootstrap_intervals_of_pass_at_k_cover_the_population_value():
    """Questions of difficulty p ~ Beta(2, 2), 8 samples each: pass@k of the population is
    1 - E[(1 - p)^k] = 1 - B(2, 2 + k) / B(2, 2), i.e. 0.5 at k = 1 and 6/7 at k = 4."""
    rng = np.random.default_rng(7)
    truth = {1: 0.5, 4: 6 / 7}
    repeats, hits = 600, {k: 0 for k in truth}
    for _ in range(repeats):
        correct_P_N = rng.random((100, 8)) < rng.beta(2, 2, size=(100, 1))
        for k, value in truth.items():
            estimate = stats.bootstrap_estimate(stats.pass_at_k_P(correct_P_N, k), rng)
            hits[k] += estimate.low <= value <= estimate.high
    for k in truth:
        assert 0.92 <= hits[k] / repeats <= 0.97, (k, hits[k])


def test_paired_differences_cover_the_true_gain_and_cancel_what_questions_share():
    """Model B answers every question A answers, and each other one with probability 0.2."""
    rng = np.random.default_rng(3)
    repeats, hits, widths = 300, 0, []
    for _ in range(repeats):
        p_P = rng.beta(2, 2, size=200)
        a_P = (rng.random(200) < p_P).astype(float)
        b_P = np.maximum(a_P, rng.random(200) < 0.2)
        d = stats.paired_difference(a_P, b_P, rng)
        assert d.value == pytest.approx(b_P.mean() - a_P.mean())
        hits += d.low <= 0.2 * 0.5 <= d.high  # E[b - a] = 0.2 (1 - E[p])
        widths.append(d.high - d.low)
    assert 0.92 <= hits / repeats <= 0.98
    # Unpaired, the interval would be sqrt(var a + var b)-wide; pairing removes the shared part.
    assert np.mean(widths) < 2 * stats.Z * math.sqrt(2 * 0.25 / 200) * 0.75


def test_a_model_compared_with_itself_differs_by_exactly_zero():
    values = np.array([1.0, 0.0, 1.0, 1.0])
    d = stats.paired_difference(values, values, np.random.default_rng(0))
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)


def test_proportion_estimates_refuse_fractions():
    with pytest.raises(ValueError, match="0/1 outcomes"):
        stats.proportion_estimate(np.array([0.5, 1.0]))
