"""Every GSM8K reference solution, rewritten in either answer format, earns the full reward.

The reasoning is the solution text before ``####`` with its calculator annotations ``<<...>>``
stripped, as a model would write it; the final number is the text after ``####`` as written
(thousands separators included).
"""

import json
import re
from pathlib import Path

import pytest

from harness.rewards import gsm8k_reward_fn, parse_ground_truth

ANNOTATION = re.compile(r"<<[^>]*>>")


def load_rows(gsm8k_dir: Path) -> list[tuple[str, str]]:
    """(``split:line``, raw ``answer`` field) for every row of both splits."""
    return [
        (f"{split}:{line_number}", json.loads(line)["answer"])
        for split in ("train", "test")
        for line_number, line in enumerate(
            (gsm8k_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(), start=1
        )
    ]


@pytest.fixture(scope="module")
def rows(gsm8k_dir) -> list[tuple[str, str]]:
    return load_rows(gsm8k_dir)


def split_solution(answer_field: str) -> tuple[str, str]:
    """(reasoning without annotations, final number as written)."""
    reasoning, _, final = answer_field.rpartition("####")
    return ANNOTATION.sub("", reasoning).strip(), final.strip()


def boxed_response(answer_field: str) -> str:
    reasoning, final = split_solution(answer_field)
    return f"{reasoning}\nThe answer is \\boxed{{{final}}}."


def r1_zero_response(answer_field: str) -> str:
    reasoning, final = split_solution(answer_field)
    return f"{reasoning} </think> <answer>{final}</answer>"


def test_all_rows_present(rows):
    assert len(rows) == 8792


def test_every_ground_truth_parses(rows):
    failures = []
    for row_id, answer_field in rows:
        try:
            parse_ground_truth(answer_field)
        except ValueError as error:
            failures.append(f"{row_id}: {error}")
    assert not failures, f"{len(failures)} rows:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    ("make_response", "use_r1_zero_format"),
    [(boxed_response, False), (r1_zero_response, True)],
    ids=["boxed", "r1_zero"],
)
def test_reference_solution_earns_full_reward(rows, make_response, use_r1_zero_format):
    failures = []
    for row_id, answer_field in rows:
        response = make_response(answer_field)
        reward = gsm8k_reward_fn(response, answer_field, use_r1_zero_format)
        if reward["format_reward"] != 1.0 or reward["answer_reward"] != 1.0:
            failures.append(f"{row_id}: {reward} for {response[-120:]!r}")
    assert not failures, f"{len(failures)} rows:\n" + "\n".join(failures)


def test_reference_solution_without_final_answer_is_not_rewarded_for_format(rows):
    """The reasoning alone holds no box and no answer block, so neither format is met."""
    failures = []
    for row_id, answer_field in rows:
        reasoning, _ = split_solution(answer_field)
        for use_r1_zero_format in (True, False):
            if gsm8k_reward_fn(reasoning, answer_field, use_r1_zero_format)["format_reward"]:
                failures.append(f"{row_id} (r1_zero={use_r1_zero_format})")
    assert not failures, f"{len(failures)} rows:\n" + "\n".join(failures)
