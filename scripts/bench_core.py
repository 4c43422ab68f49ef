"""Benchmark of the pure core: reward throughput and one step's batch preparation.

    python scripts/bench_core.py [--questions 256] [--group-size 8] [--repeats 5]

Prints the median over repeats of: scoring 2,048 realistic responses (~300 tokens, mixed
formats), and turning `questions x group_size` rollouts into training data (rewards, advantages,
Datums). Pin to one core with `taskset -c 0` to measure the single-core figure.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import tyro

from harness.data.gsm8k import read_jsonl_problems
from harness.datums import step_datums
from harness.grpo import group_normalized_advantages
from harness.rewards import gsm8k_reward_fn

GSM8K_TRAIN = Path(__file__).resolve().parent.parent / "fixtures" / "gsm8k" / "train.jsonl"


@dataclasses.dataclass(frozen=True)
class Args:
    questions: int = 256
    group_size: int = 8
    repeats: int = 5
    seed: int = 0


def realistic_responses(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(response, ground truth) pairs: GSM8K reasoning padded to ~300 tokens, in both formats,
    right and wrong, with and without a well-formed answer."""
    problems = read_jsonl_problems(GSM8K_TRAIN)[: n * 2]
    pairs = []
    for i in range(n):
        problem = problems[int(rng.integers(len(problems)))]
        reasoning, truth = problem.answer.split("####")
        truth = truth.strip()
        answer = truth if rng.random() < 0.5 else str(int(rng.integers(1000)))
        reasoning = (reasoning.strip() + " ") * 3  # GSM8K solutions are ~100 tokens
        shape = i % 4
        if shape == 0:
            response = f"{reasoning}</think> <answer>{answer}</answer>"
        elif shape == 1:
            response = f"{reasoning}The answer is \\boxed{{{answer}}}."
        elif shape == 2:
            response = f"{reasoning}</think> <answer>\\boxed{{{answer}}}</answer>"
        else:
            response = f"{reasoning}so it is {answer} dollars"
        pairs.append((response, problem.answer))
    return pairs


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(args: Args) -> None:
    rng = np.random.default_rng(args.seed)
    n = args.questions * args.group_size
    pairs = realistic_responses(n, rng)
    prompt_tokens_P = [
        rng.integers(0, 2000, size=int(rng.integers(80, 160))) for _ in range(args.questions)
    ]
    lengths_P_G = rng.integers(150, 450, size=(args.questions, args.group_size))
    # As SampledSequence.tokens_np / logprobs_np hold them.
    tokens_P_G = [
        [rng.integers(0, 2000, size=int(s)).astype(np.int32) for s in row] for row in lengths_P_G
    ]
    logprobs_P_G = [[(-rng.random(int(s))).astype(np.float32) for s in row] for row in lengths_P_G]

    def score() -> np.ndarray:
        return np.array([gsm8k_reward_fn(r, t)["reward"] for r, t in pairs], dtype=np.float32)

    rewards_P_G = torch.from_numpy(score().reshape(args.questions, args.group_size))

    def advantages() -> np.ndarray:
        return group_normalized_advantages(rewards_P_G, 1e-6, True).numpy()

    advantages_P_G = advantages()

    def datums() -> object:
        return step_datums(prompt_tokens_P, tokens_P_G, logprobs_P_G, advantages_P_G)

    def whole_step() -> object:
        score()
        advantages()
        return datums()

    t_score = median_seconds(score, args.repeats)
    t_adv = median_seconds(advantages, args.repeats)
    t_datums = median_seconds(datums, args.repeats)
    t_step = median_seconds(whole_step, args.repeats)
    n_datums = len(datums()[0])
    mean_chars = statistics.mean(len(r) for r, _ in pairs)
    print(f"responses: {n} (mean {mean_chars:.0f} characters), datums built: {n_datums}")
    print(f"reward fn:        {t_score * 1e3:8.1f} ms  ({n / t_score:,.0f} responses/s)")
    print(f"advantages:       {t_adv * 1e3:8.1f} ms")
    print(f"datums:           {t_datums * 1e3:8.1f} ms  ({t_datums / n_datums * 1e6:.1f} us/datum)")
    print(f"whole batch prep: {t_step * 1e3:8.1f} ms  (target < 50 ms on one core)")


if __name__ == "__main__":
    main(tyro.cli(Args))
