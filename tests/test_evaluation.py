"""The shared evaluation path: the requests it makes, the records it writes, its statistics."""

from __future__ import annotations

import math
from concurrent.futures import Future

import numpy as np
import pytest
from tinker import types
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture
from transformers import AutoTokenizer

from harness.data import Problem
from harness.evaluation import (
    Sampling,
    estimates,
    evaluate,
    per_question,
    validation_metrics,
)
from harness.prompts import PROMPT_NAMES, answers_in_tags, format_prompt
from harness.rewards import make_reward_fn
from harness.rollouts import request_seed, stop_sequences

QUESTIONS = [
    (3, Problem(question="What is 2 + 2?", answer="#### 4")),
    (8, Problem(question="What is 3 * 5?", answer="#### 15")),
]


class ScriptedSampler:
    """Answers each prompt with the texts given for it; keeps every request."""

    def __init__(self, tokenizer, answers: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.answers = answers
        self.requests: list[tuple[list[int], int, types.SamplingParams]] = []

    def sample(self, prompt, num_samples, sampling_params):
        self.requests.append((prompt.to_ints(), num_samples, sampling_params))
        question = next(q for q in self.answers if q in self.tokenizer.decode(prompt.to_ints()))
        sequences = [
            types.SampledSequence(
                stop_reason="stop",
                sequence_id=f"s:{i}",
                _tokens_list=self.tokenizer.encode(text),
                _logprobs_list=[-1.0] * len(self.tokenizer.encode(text)),
            )
            for i, text in enumerate(self.answers[question][:num_samples])
        ]
        future: Future = Future()
        future.set_result(types.SampleResponse(sequences=sequences))
        return AwaitableConcurrentFuture(future)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("prompt", PROMPT_NAMES)
def test_greedy_requests_use_the_training_prompts_and_stops_and_no_seed(tokenizer, prompt):
    sampler = ScriptedSampler(tokenizer, {"2 + 2": [r"\boxed{4}"], "3 * 5": ["16"]})
    r1_zero = answers_in_tags(prompt)
    reward_fn = make_reward_fn(r1_zero)
    records = evaluate(sampler, tokenizer, QUESTIONS, reward_fn, prompt, Sampling(max_tokens=9))
    for (_, problem), (tokens, n, params) in zip(QUESTIONS, sampler.requests, strict=True):
        assert tokens == tokenizer.encode(format_prompt(problem.question, prompt))
        assert (n, params.max_tokens, params.temperature, params.seed) == (1, 9, 0.0, None)
        assert params.stop == stop_sequences(tokenizer, r1_zero)
    assert [(r["index"], r["sample"], r["parsed_answer"]) for r in records] == [
        (3, 0, "4"),
        (8, 0, "16"),
    ]
    assert [r["answer_reward"] for r in records] == [1.0, 0.0]
    assert records[0] | reward_fn(records[0]["response"], "#### 4") == records[0]


def test_sampled_requests_are_seeded_by_seed_step_and_test_index_apart_from_rollouts(tokenizer):
    sampler = ScriptedSampler(tokenizer, {"2 + 2": ["4"] * 3, "3 * 5": ["15"] * 3})
    sampling = Sampling(max_tokens=9, num_samples=3, temperature=0.7, seed=5, step=20)
    records = evaluate(sampler, tokenizer, QUESTIONS, make_reward_fn(False), "boxed", sampling)
    seeds = [params.seed for _, _, params in sampler.requests]
    assert seeds == [request_seed(5, 20, index, purpose="evaluation") for index, _ in QUESTIONS]
    assert not set(seeds) & {request_seed(5, 20, index) for index in (0, 1, 3, 8)}
    assert [(r["index"], r["sample"]) for r in records] == [
        (i, s) for i in (3, 8) for s in (0, 1, 2)
    ]


def record(index: int, parsed: str | None, correct: float, formatted: float = 1.0) -> dict:
    return {
        "index": index,
        "parsed_answer": parsed,
        "answer_reward": correct,
        "format_reward": formatted,
    }


SAMPLED = [
    # question 4: 1 of 3 right, the majority ("$7" and "7.0" are one vote) wrong
    record(4, "12", 1.0),
    record(4, "$7", 0.0),
    record(4, "7.0", 0.0, formatted=0.0),
    # question 1: 3 of 3 right; question 9: none right, no answer twice
    *(record(1, "5", 1.0) for _ in range(3)),
    record(9, None, 0.0, 0.0),
    record(9, "3", 0.0),
    record(9, None, 0.0, 0.0),
]


def test_per_question_values_in_test_index_order():
    values = per_question(SAMPLED)
    assert list(values) == ["accuracy", "format_accuracy", "pass@1", "pass@2", "pass@3", "maj@3"]
    np.testing.assert_allclose(values["accuracy"], [1.0, 1 / 3, 0.0])  # questions 1, 4, 9
    np.testing.assert_allclose(values["format_accuracy"], [1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(values["pass@1"], values["accuracy"])
    np.testing.assert_allclose(values["pass@2"], [1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(values["pass@3"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(values["maj@3"], [1.0, 0.0, 0.0])


def test_per_question_needs_as_many_answers_for_every_question():
    with pytest.raises(ValueError, match="same number of answers"):
        per_question(SAMPLED[:-1])


def test_validation_metrics_greedy_and_sampled():
    greedy = [record(i, str(i), float(i % 3 == 0)) for i in range(10)]  # 4 of 10 right
    assert validation_metrics(greedy) == pytest.approx(
        {
            "val/accuracy": 0.4,
            "val/accuracy_stderr": math.sqrt(0.4 * 0.6 / 10),
            "val/format_accuracy": 1.0,
        }
    )
    sampled = validation_metrics(SAMPLED)
    assert sampled["val/accuracy"] == pytest.approx(4 / 9)
    assert sampled["val/accuracy_stderr"] == pytest.approx(np.std([1, 1 / 3, 0]) / math.sqrt(3))
    assert (sampled["val/pass@3"], sampled["val/maj@3"]) == pytest.approx((2 / 3, 1 / 3))


def test_intervals_are_wilson_for_outcomes_and_bootstrap_for_fractions():
    greedy = estimates(per_question([record(i, "1", float(i < 7)) for i in range(10)]), 1, 0)
    assert {e.method for e in greedy.values()} == {"wilson"}
    sampled = estimates(per_question(SAMPLED), 3, 0)
    assert {n: e.method for n, e in sampled.items()} == {
        "accuracy": "bootstrap",
        "format_accuracy": "bootstrap",
        "pass@1": "bootstrap",
        "pass@2": "bootstrap",
        "pass@3": "bootstrap",
        "maj@3": "wilson",
    }
    pass_1, accuracy = sampled["pass@1"], sampled["accuracy"]  # the same resamples of questions
    assert (pass_1.low, pass_1.high) == pytest.approx((accuracy.low, accuracy.high), abs=1e-15)
    for estimate in sampled.values():
        assert estimate.low <= estimate.value <= estimate.high
