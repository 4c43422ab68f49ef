"""Problems to train and validate on, and the resumable order in which training takes them."""

from harness.data.cursor import BatchCursor, next_batch
from harness.data.gsm8k import DatasetUnavailable, Problem, load_gsm8k

__all__ = ["BatchCursor", "DatasetUnavailable", "Problem", "load_gsm8k", "next_batch"]
