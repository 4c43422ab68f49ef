"""GSM8K rows, from a local folder of jsonl files or from the `openai/gsm8k` dataset on the hub."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

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
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(Problem(question=row["question"], answer=row["answer"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DatasetUnavailable(
                    f"{path}:{line_no}: expected a JSON object with 'question' and 'answer' ({e})"
                ) from e
    if not problems:
        raise DatasetUnavailable(f"{path}: no rows")
    return problems


def _load_from_hub(split: str) -> list[Problem]:
    # The datasets library retries an unreachable hub for ~25 s before failing; a quick probe
    # fails at once. HF_HUB_OFFLINE=1 skips the probe and reads the local cache.
    if os.environ.get("HF_HUB_OFFLINE") != "1" and not _hub_reachable():
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
    return [Problem(question=r["question"], answer=r["answer"]) for r in rows]


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True
