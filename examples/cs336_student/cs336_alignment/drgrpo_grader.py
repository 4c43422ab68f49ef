"""A student's graders in the shape of CS336's `r1_zero_reward_fn`: (response, ground_truth)
-> {"format_reward", "answer_reward", "reward"}, where the reward is 1 only for a right answer
in the right format (no partial credit for format, unlike the harness's 0.2/0.8 reward)."""

import re

_ANSWER = re.compile(r"</think> <answer>(.*?)</answer>", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _same_number(text: str, ground_truth: str) -> bool:
    numbers = _NUMBER.findall(text.replace(",", ""))
    return bool(numbers) and float(numbers[-1]) == float(ground_truth.replace(",", ""))


def _graded(answer: str | None, ground_truth: str) -> dict[str, float]:
    if answer is None:
        return {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    correct = float(_same_number(answer, ground_truth))
    return {"format_reward": 1.0, "answer_reward": correct, "reward": correct}


def r1_zero_reward_fn(response: str, ground_truth: str, fast: bool = True) -> dict[str, float]:
    """For the R1-Zero prompt: the answer is the content of `</think> <answer>...</answer>`."""
    match = _ANSWER.search(response)
    return _graded(match[1] if match else None, ground_truth)


def boxed_reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    """For the plain prompt: the answer is the content of the one `\\boxed{...}`."""
    boxes = _BOXED.findall(response)
    return _graded(boxes[0] if len(boxes) == 1 else None, ground_truth)
