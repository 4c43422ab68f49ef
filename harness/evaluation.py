"""Greedy validation on a fixed, seeded random subset of the test set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tinker

from harness.data import Problem
from harness.prompts import format_prompt
from harness.resilience import Waits
from harness.rewards import extract_answer
from harness.rollouts import Collect, collect_quietly, encode_prompts, sample_groups, stop_sequences

RewardFn = Callable[[str, str], dict[str, float]]


def validation_subset(n_test: int, eval_n: int, seed: int) -> list[int]:
    """The same `eval_n` test indices for every evaluation of a run (all of them if fewer)."""
    chosen = np.random.default_rng(seed).choice(n_test, size=min(eval_n, n_test), replace=False)
    return sorted(int(i) for i in chosen)


def evaluate(
    sampling_client: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    reward_fn: RewardFn,
    use_r1_zero_format: bool,
    max_tokens: int,
    collect: Collect = collect_quietly,
    waits: Waits | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Accuracy and format accuracy of greedy answers; also one record per question (with its
    request's prompt and response token counts)."""
    prompts = [format_prompt(p.question, use_r1_zero_format) for p in problems]
    params = tinker.SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        stop=stop_sequences(tokenizer, use_r1_zero_format),
    )
    prompt_inputs = encode_prompts(tokenizer, prompts)
    responses = sample_groups(
        sampling_client,
        prompt_inputs,
        group_size=1,
        params_P=[params] * len(prompts),
        collect=collect,
        description="validation",
        waits=waits,
    )
    records = []
    for problem, prompt, response in zip(problems, prompt_inputs, responses, strict=True):
        sequence = response.sequences[0]
        text = tokenizer.decode(sequence.tokens, skip_special_tokens=True)
        reward = reward_fn(text, problem.ground_truth)
        records.append(
            {
                "question": problem.question,
                "ground_truth": problem.answer,
                "response": text,
                "parsed_answer": extract_answer(text),
                "stop_reason": sequence.stop_reason,
                "prompt_tokens": prompt.length,
                "response_tokens": len(sequence.tokens),
                **reward,
            }
        )
    metrics = {
        "val/accuracy": float(np.mean([r["answer_reward"] for r in records])),
        "val/format_accuracy": float(np.mean([r["format_reward"] for r in records])),
    }
    return metrics, records
