"""Evaluation: answers to test questions, scored with the task's reward, and their statistics.

One code path for the loop's validation and `scripts/evaluate.py`: the same prompts, stop
sequences, decoding, reward and sample records. Greedy, one answer per question by default; or
`num_samples` answers at `temperature`, seeded by (run seed, step, question's test index).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import tinker

from harness import stats
from harness.data import Problem
from harness.prompts import PromptName, answers_in_tags, format_prompt
from harness.resilience import Waits
from harness.rewards import RewardFn, extract_answer, normalize_number
from harness.rollouts import (
    Collect,
    collect_quietly,
    encode_prompts,
    request_seed,
    stop_sequences,
    submit_groups,
)

# A question and its index in the test split (what seeds its samples and pairs evaluations).
Question = tuple[int, Problem]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How an evaluation samples its answers."""

    max_tokens: int
    num_samples: int = 1
    temperature: float = 0.0
    seed: int = 0
    step: int = 0
    """With the run's seed, seeds sampled (temperature > 0) answers; greedy ones need none."""


def validation_subset(n_test: int, eval_n: int, seed: int) -> list[int]:
    """The same `eval_n` test indices for every evaluation of a run (all of them if fewer)."""
    chosen = np.random.default_rng(seed).choice(n_test, size=min(eval_n, n_test), replace=False)
    return sorted(int(i) for i in chosen)


def request_params(sampling: Sampling, stop: list[str] | None, index: int) -> tinker.SamplingParams:
    seed = None
    if sampling.temperature > 0:
        seed = request_seed(sampling.seed, sampling.step, index, purpose="evaluation")
    return tinker.SamplingParams(
        max_tokens=sampling.max_tokens, temperature=sampling.temperature, stop=stop, seed=seed
    )


def evaluate(
    sampling_client: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    reward_fn: RewardFn,
    prompt: PromptName,
    sampling: Sampling,
    collect: Collect = collect_quietly,
    description: str = "validation",
    waits: Waits | None = None,
) -> list[dict[str, Any]]:
    """One record per sampled answer (question by question, with its request's prompt and
    response token counts), every request in flight at once."""
    pending = submit_evaluation(
        sampling_client, tokenizer, questions, prompt, sampling, description, waits
    )
    return pending.records(reward_fn, collect)


@dataclasses.dataclass(frozen=True)
class PendingEvaluation:
    """An evaluation's requests in flight (`submit_evaluation`); `records` waits for them."""

    tokenizer: Any
    questions: Sequence[Question]
    prompt_inputs: Sequence[tinker.ModelInput]
    requests: Sequence[Any]
    description: str

    def records(
        self, reward_fn: RewardFn, collect: Collect = collect_quietly
    ) -> list[dict[str, Any]]:
        responses = collect(self.requests, self.description)
        return answer_records(
            self.questions, self.prompt_inputs, responses, self.tokenizer, reward_fn
        )


def submit_evaluation(
    sampling_client: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    prompt: PromptName,
    sampling: Sampling,
    description: str = "validation",
    waits: Waits | None = None,
) -> PendingEvaluation:
    """`evaluate`'s requests, all submitted, none waited for."""
    stop = stop_sequences(tokenizer, answers_in_tags(prompt))
    prompts = [format_prompt(problem.question, prompt) for _, problem in questions]
    prompt_inputs = encode_prompts(tokenizer, prompts)
    requests = submit_groups(
        sampling_client,
        prompt_inputs,
        group_size=sampling.num_samples,
        params_P=[request_params(sampling, stop, index) for index, _ in questions],
        purpose="evaluation",
        description=description,
        waits=waits,
    )
    return PendingEvaluation(tokenizer, questions, prompt_inputs, requests, description)


def answer_records(
    questions: Sequence[Question],
    prompts: Sequence[tinker.ModelInput],
    responses: Sequence[tinker.SampleResponse],
    tokenizer: Any,
    reward_fn: RewardFn,
) -> list[dict[str, Any]]:
    """One record per answer of each question's response, decoded and scored."""
    records = []
    for (index, problem), prompt, response in zip(questions, prompts, responses, strict=True):
        for sample, sequence in enumerate(response.sequences):
            text = tokenizer.decode(sequence.tokens, skip_special_tokens=True)
            records.append(
                {
                    "index": index,
                    "sample": sample,
                    "question": problem.question,
                    "ground_truth": problem.answer,
                    "response": text,
                    "parsed_answer": extract_answer(text),
                    "stop_reason": sequence.stop_reason,
                    "prompt_tokens": prompt.length,
                    "response_tokens": len(sequence.tokens),
                    **reward_fn(text, problem.ground_truth),
                }
            )
    return records


def per_question(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each metric's value per question, in order of test index: `accuracy` and
    `format_accuracy` (means over the question's answers); with n > 1 answers, also `pass@k`
    for k = 1..n (the unbiased estimator; pass@1 is the accuracy) and `maj@n`."""
    indices = sorted({r["index"] for r in records})
    rows: dict[int, list[dict[str, Any]]] = {i: [] for i in indices}
    for record in records:
        rows[record["index"]].append(record)
    n = len(rows[indices[0]])
    if any(len(rows[i]) != n for i in indices):
        raise ValueError("every question needs the same number of answers")
    correct_P_N = np.array([[r["answer_reward"] for r in rows[i]] for i in indices])
    values = {
        "accuracy": correct_P_N.mean(axis=1),
        "format_accuracy": np.array([[r["format_reward"] for r in rows[i]] for i in indices]).mean(
            axis=1
        ),
    }
    if n > 1:
        values |= {f"pass@{k}": stats.pass_at_k_P(correct_P_N, k) for k in range(1, n + 1)}
        values[f"maj@{n}"] = np.array(
            [
                stats.majority_correct([_vote(r) for r in rows[i]], correct_N)
                for i, correct_N in zip(indices, correct_P_N, strict=True)
            ]
        )
    return values


def _vote(record: dict[str, Any]) -> Fraction | None:
    """An answer's vote is its value: "36", "36.0" and "$36" vote alike, as the reward sees them."""
    parsed = record["parsed_answer"]
    return None if parsed is None else normalize_number(parsed)


def validation_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The loop's `val/*`: mean accuracy with its standard error over questions, format
    accuracy, and with several answers per question pass@n and maj@n."""
    values = per_question(records)
    n = len(records) // len(values["accuracy"])
    metrics = {
        "val/accuracy": float(values["accuracy"].mean()),
        "val/accuracy_stderr": stats.standard_error(values["accuracy"]),
        "val/format_accuracy": float(values["format_accuracy"].mean()),
    }
    if n > 1:
        metrics |= {f"val/{k}": float(values[k].mean()) for k in (f"pass@{n}", f"maj@{n}")}
    return metrics


def estimates(
    values: dict[str, np.ndarray], num_samples: int, seed: int
) -> dict[str, stats.Estimate]:
    """Each metric's mean with its 95% interval: Wilson for per-question 0/1 outcomes (one
    answer per question, a majority vote), a bootstrap over questions for per-question
    fractions (the mean of several answers, pass@k). Every bootstrap draws the same resamples
    of the questions, so pass@1's interval is the accuracy's and pass@k's rise with k."""
    return {
        name: stats.proportion_estimate(values_P)
        if num_samples == 1 or name.startswith("maj@")
        else stats.bootstrap_estimate(values_P, np.random.default_rng(seed))
        for name, values_P in values.items()
    }
