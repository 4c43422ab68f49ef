"""The arithmetic task: GSM8K-shaped rows, correct answers, a split that never overlaps."""

import random
import re

import pytest

from harness.data import load_problems
from harness.data.arith import N_TEST, N_TRAIN, generate_splits, load_arith
from harness.prompts import format_prompt, prompt_for
from harness.rewards import gsm8k_reward_fn

EQUATION = re.compile(r"^(\d+) ([+*]) (\d+) = (\d+)$")
OPERATORS = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}


@pytest.fixture(scope="module")
def splits():
    return load_arith("train"), load_arith("test")


def test_splits_have_their_sizes_and_never_overlap(splits):
    train, test = splits
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    train_questions = {p.question for p in train}
    assert len(train_questions) == N_TRAIN and len({p.question for p in test}) == N_TEST
    assert not train_questions & {p.question for p in test}
    # stronger: no test problem repeats a training problem's computation
    assert not {p.answer for p in train} & {p.answer for p in test}


def test_every_answer_is_a_chain_of_correct_equations_ending_in_its_value(splits):
    for problem in splits[0][:3000] + splits[1]:
        *lines, final = problem.answer.split("\n")
        assert 1 <= len(lines) <= 3, problem
        known = {int(n) for n in re.findall(r"\d+", problem.question)}
        for line in lines:
            a, op, b, result = EQUATION.match(line).groups()
            # every operand was given in the question or computed on an earlier line
            assert {int(a), int(b)} <= known, problem
            assert OPERATORS[op](int(a), int(b)) == int(result), problem
            known.add(int(result))
        assert final == f"#### {result}"


def test_the_mix_has_one_two_and_three_operations_of_both_kinds(splits):
    answers = [p.answer for p in splits[0]]
    assert {a.count("\n") for a in answers} == {1, 2, 3}
    assert any(" + " in a for a in answers) and any(" * " in a for a in answers)
    assert all(" + " in a or " * " in a for a in answers)


def test_generation_is_a_function_of_the_seed():
    first = generate_splits(seed=1, n_train=50, n_test=5)
    generate_splits.cache_clear()  # regenerate, not the cached tuple
    again = generate_splits(seed=1, n_train=50, n_test=5)
    assert again is not first and again == first
    assert again != generate_splits(seed=2, n_train=50, n_test=5)


@pytest.mark.parametrize("use_r1_zero_format", [True, False])
def test_the_gsm8k_reward_scores_a_right_answer_in_either_prompt_format(splits, use_r1_zero_format):
    problem = random.Random(0).choice(splits[1])
    value = problem.answer.split("#### ")[1]
    reasoning = problem.answer.split("\n#### ")[0]
    if use_r1_zero_format:
        right = f" {reasoning} </think> <answer>{value}</answer>"
        wrong = f" {reasoning} </think> <answer>{int(value) + 1}</answer>"
    else:
        right, wrong = (
            f" {reasoning}\n\\boxed{{{value}}}",
            f" {reasoning}\n\\boxed{{{int(value) + 1}}}",
        )
    assert "{question}" not in format_prompt(problem.question, prompt_for(use_r1_zero_format))
    assert gsm8k_reward_fn(right, problem.answer, use_r1_zero_format)["reward"] == 1.0
    assert gsm8k_reward_fn(wrong, problem.answer, use_r1_zero_format)["answer_reward"] == 0.0


def test_the_training_script_loader_dispatches_to_the_task(splits):
    assert load_problems("arith", "test") == splits[1]


def test_an_unknown_split_is_named():
    with pytest.raises(ValueError, match="'validation'"):
        load_arith("validation")
