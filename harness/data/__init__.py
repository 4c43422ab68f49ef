"""Problems to train and validate on, and the resumable order in which training takes them."""

from harness.data.cursor import BatchCursor, cursor_at_step, next_batch
from harness.data.gsm8k import DatasetUnavailable, Problem, load_gsm8k


def load_problems(dataset: str, split: str, dataset_path: str | None = None) -> list[Problem]:
    """The `split` ("train" or "test") of a task, as GSM8K-style rows."""
    if dataset == "gsm8k":
        return load_gsm8k(split, dataset_path)
    if dataset == "arith":
        from harness.data.arith import load_arith

        return load_arith(split)
    raise ValueError(f"unknown dataset {dataset!r}")


__all__ = [
    "BatchCursor",
    "DatasetUnavailable",
    "Problem",
    "cursor_at_step",
    "load_gsm8k",
    "load_problems",
    "next_batch",
]
