"""GSM8K rows, from a local folder of jsonl files or from the `openai/gsm8k` dataset on the hub."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from harness.rewards import parse_ground_truth

HUB_DATASET = ("openai/gsm8k", "main")
HUB_HOST = "huggingface.co"


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be loaded; the message says what to do instead."""


@dataclass(frozen=True)
class Problem:
    """One GSM8K row: `answer` is the reference solution ending in `#### N`."""

    question: str
    answer: str

    @property
    def ground_truth(self) -> str:
        """The final answer, the text after the last `####` (e.g. "72"): what reward functions
        are given, as CS336's graders expect."""
        return self.answer.rpartition("####")[2].strip()


def load_gsm8k(split: str, dataset_path: str | Path | None = None) -> list[Problem]:
    """The `split` ("train" or "test") rows, from `dataset_path` when given, else from the hub."""
    if dataset_path is not None:
        return read_jsonl_problems(Path(dataset_path) / f"{split}.jsonl")
    return _load_from_hub(split)


def read_jsonl_problems(path: Path) -> list[Problem]:
    problems = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetUnavailable(
                    f"{where}: not UTF-8 text ({e.reason} at byte {e.start})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetUnavailable(f"{where}: not a JSON line ({e})") from e
            problems.append(checked_problem(row, where))
    if not problems:
        raise DatasetUnavailable(f"{path}: no rows")
    return problems


def checked_problem(row: object, where: str) -> Problem:
    """A row as a Problem, refused now (naming `where`) if the run could not score it: a row
    the reward cannot parse would crash the run when its batch comes up, and again at the same
    step on every resume."""
    if not isinstance(row, dict) or "question" not in row or "answer" not in row:
        raise DatasetUnavailable(f"{where}: expected a JSON object with 'question' and 'answer'")
    question, answer = row["question"], row["answer"]
    if not isinstance(question, str) or not question.strip():
        raise DatasetUnavailable(f"{where}: 'question' must be non-empty text, got {question!r}")
    if not isinstance(answer, str):
        raise DatasetUnavailable(
            f"{where}: 'answer' must be text ending in '#### <number>', got {answer!r}"
        )
    try:
        parse_ground_truth(answer)
    except ValueError:
        raise DatasetUnavailable(
            f"{where}: 'answer' must end in '#### <number>', got {answer[-80:]!r}"
        ) from None
    return Problem(question=question, answer=answer)


def _load_from_hub(split: str) -> list[Problem]:
    # The datasets library retries an unreachable hub for ~25 s before failing; a quick probe
    # fails at once. HF_HUB_OFFLINE=1 skips the probe and reads the local cache.
    if os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
        raise DatasetUnavailable(
            f"{HUB_DATASET[0]} cannot be loaded: the Hugging Face hub is unreachable; pass "
            "--dataset_path=FOLDER with train.jsonl and test.jsonl (e.g. fixtures/gsm8k)"
        )
    import datasets

    try:
        rows = datasets.load_dataset(*HUB_DATASET, split=split)
    except Exception as e:  # the library raises many types for "not there"
        raise DatasetUnavailable(
            f"{HUB_DATASET[0]} cannot be loaded ({type(e).__name__}); pass --dataset_path=FOLDER "
            "with train.jsonl and test.jsonl (e.g. fixtures/gsm8k)"
        ) from e
    return [checked_problem(row, f"{HUB_DATASET[0]} {split} row {i}") for i, row in enumerate(rows)]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True
