"""Golden reward cases (fixtures/reward_cases.jsonl) and unit tests of the reward's helpers."""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from harness.rewards import (
    extract_answer,
    gsm8k_reward_fn,
    make_reward_fn,
    normalize_number,
    parse_ground_truth,
)

CASES_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "reward_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text(encoding="utf-8").splitlines()]


def full_response(case: dict) -> str:
    """A case's response, with its optional ``repeat`` text prepended (keeps long cases small)."""
    repeat = case.get("repeat")
    prefix = repeat["text"] * repeat["times"] if repeat else ""
    return prefix + case["response"]


def test_fixture_is_large_consistent_and_covers_both_formats():
    assert len(CASES) >= 80
    assert len({case["id"] for case in CASES}) == len(CASES)
    assert {case["use_r1_zero_format"] for case in CASES} == {True, False}
    assert any(len(full_response(case)) >= 50_000 for case in CASES)
    for case in CASES:
        assert case["reward"] == pytest.approx(
            0.2 * case["format_reward"] + 0.8 * case["answer_reward"]
        ), case["id"]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_golden_case(case):
    got = gsm8k_reward_fn(full_response(case), case["ground_truth"], case["use_r1_zero_format"])
    expected = {key: case[key] for key in ("reward", "format_reward", "answer_reward")}
    assert got == pytest.approx(expected), case["why"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("a </think> <answer>72</answer>", "72"),
        ("<answer> 5 </answer> then <answer>\n6\n</answer>", "6"),
        ("<answer>5<answer>6</answer>", "6"),
        ("<answer>the sum is \\boxed{\\frac{3}{4}} or so</answer>", "\\frac{3}{4}"),
        ("<answer></answer> 72", ""),
        ("\\boxed{1} and \\boxed{\\text{2 {x}}}", "\\text{2 {x}}"),
        ("\\boxed{1} and \\boxed{2", "1"),
        ("\\boxed{\\boxed{7}}", "7"),
        ("no tags, 3 then -1,234.5 dollars", "-1,234.5"),
        ("ends in \\frac{1}{2}.", "\\frac{1}{2}"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72", Fraction(72)),
        ("18.0", Fraction(18)),
        ("18.50", Fraction(37, 2)),
        (".5", Fraction(1, 2)),
        ("2 * 20% = .4 liters", Fraction(2, 5)),
        ("the answer is...72", Fraction(72)),  # an ellipsis, not a decimal point
        ("1,234,567", Fraction(1234567)),
        ("1{,}234", Fraction(1234)),
        ("1\\,234", Fraction(1234)),
        ("$1,234.50", Fraction(246_900, 200)),
        ("\\$18", Fraction(18)),
        ("25%", Fraction(25)),
        ("18 dollars", Fraction(18)),
        ("5 cm.", Fraction(5)),
        ("-7", Fraction(-7)),
        ("−7", Fraction(-7)),
        ("-$7", Fraction(-7)),
        ("x = -7", Fraction(-7)),
        ("10-5", Fraction(5)),  # subtraction, not a negative 5
        ("3/4", Fraction(3, 4)),
        ("3 / 4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{-3}{4}", Fraction(-3, 4)),
        ("\\frac{−3}{4}", Fraction(-3, 4)),
        ("-\\tfrac { 6 } { 4 }", Fraction(-3, 2)),
        ("48 + 24 = 72", Fraction(72)),
        ("答案是72。", Fraction(72)),
        ("3/0", None),
        ("9" * 5000, None),  # beyond int()'s digit limit: no value, no exception
        ("seventy-two", None),
        ("", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("ground_truth", "expected"),
    [
        ("72", Fraction(72)),
        (" 1,234 ", Fraction(1234)),
        ("-7", Fraction(-7)),
        ("0.5", Fraction(1, 2)),
        ("She sold 48+24 = <<48+24=72>>72 clips.\n#### 72", Fraction(72)),
        ("The area is <<1000+234=1234>>1,234.\n#### 1,234", Fraction(1234)),
    ],
)
def test_parse_ground_truth(ground_truth, expected):
    assert parse_ground_truth(ground_truth) == expected


@pytest.mark.parametrize(
    "ground_truth",
    ["", "#### ", "#### seventy", "She sold 72 clips.", "72 clips", "#### 3/0"],
)
def test_parse_ground_truth_rejects_non_numbers(ground_truth):
    with pytest.raises(ValueError, match="ground truth must be a number"):
        parse_ground_truth(ground_truth)


def test_reward_fn_raises_on_bad_ground_truth_not_on_response():
    with pytest.raises(ValueError, match="ground truth"):
        gsm8k_reward_fn("</think> <answer>72</answer>", "no number")


@pytest.mark.parametrize("use_r1_zero_format", [True, False])
def test_make_reward_fn_binds_the_format(use_r1_zero_format):
    response = "48 + 24 = 72 </think> <answer>72</answer> \\boxed{72}"
    reward_fn = make_reward_fn(use_r1_zero_format)
    assert reward_fn(response, "72") == gsm8k_reward_fn(response, "72", use_r1_zero_format)
