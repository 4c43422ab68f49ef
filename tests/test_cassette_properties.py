"""`match_key` and `first_difference` agree: the replayer looks a request up by its key, then
compares with `first_difference`, so a key must never hide a difference that is not a number
within rounding, and requests equal within the tolerance must share a key unless a number's
rounding splits them (the case the replayer's fallback search covers)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from harness.backends.cassette_compare import first_difference, match_key
from tests.support.strategies import encoded_values, nudged


def rounded(number: float) -> float:
    return float(f"{number:.5g}")  # the precision match_key keeps


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number_pairs(a: Any, b: Any) -> Iterator[tuple[float, float]]:
    """The numbers at the same places of two trees of one shape."""
    if is_number(a) and is_number(b):
        yield a, b
    elif isinstance(a, list) and isinstance(b, list):
        for x, y in zip(a, b, strict=True):
            yield from number_pairs(x, y)
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            yield from number_pairs(a[key], b[key])


PAIRS = encoded_values().flatmap(lambda a: st.tuples(st.just(a), nudged(a) | encoded_values()))


@given(encoded_values())
def test_a_value_equals_its_copy_and_shares_its_key(tree):
    twin = copy.deepcopy(tree)
    assert first_difference(tree, twin) is None and match_key(tree) == match_key(twin)


@given(PAIRS)
def test_equal_keys_hide_only_differences_of_numbers_that_round_alike(pair):
    a, b = pair
    if match_key(a) == match_key(b):
        found = first_difference(a, b)
        assert found is None or (
            is_number(found.recorded)
            and is_number(found.replayed)
            and rounded(found.recorded) == rounded(found.replayed)
        )


@given(PAIRS)
def test_values_equal_within_tolerance_share_a_key_unless_a_number_rounds_apart(pair):
    a, b = pair
    if first_difference(a, b) is None and match_key(a) != match_key(b):
        assert any(rounded(x) != rounded(y) for x, y in number_pairs(a, b))


@given(PAIRS)
def test_the_comparison_is_symmetric(pair):
    a, b = pair
    assert (first_difference(a, b) is None) == (first_difference(b, a) is None)
