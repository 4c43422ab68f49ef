"""A resumable walk over the training set: a fresh seeded shuffle each epoch.

The cursor is plain data (epoch, offset) so a checkpoint can store it and a resumed run takes
exactly the batches the uninterrupted run would have taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchCursor:
    epoch: int = 0
    offset: int = 0


def epoch_order(n_problems: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_problems)


def cursor_at_step(step: int, n_problems: int, batch_size: int) -> BatchCursor:
    """Where the cursor stands after `step` batches from the start: every batch takes exactly
    `batch_size` problems, running on into the next epoch's order, so that is a position."""
    epoch, offset = divmod(step * batch_size, n_problems)
    return BatchCursor(epoch=epoch, offset=offset)


def next_batch(
    cursor: BatchCursor, n_problems: int, batch_size: int, seed: int
) -> tuple[list[int], BatchCursor]:
    """The next `batch_size` problem indices and the cursor after them.

    When the epoch runs out mid-batch, the batch continues with the next epoch's order.
    """
    if n_problems <= 0 or batch_size <= 0:
        raise ValueError(f"need n_problems > 0 and batch_size > 0, got {n_problems}, {batch_size}")
    indices: list[int] = []
    epoch, offset = cursor.epoch, cursor.offset
    while len(indices) < batch_size:
        order = epoch_order(n_problems, seed, epoch)
        take = order[offset : offset + batch_size - len(indices)]
        indices.extend(int(i) for i in take)
        offset += len(take)
        if offset >= n_problems:
            epoch, offset = epoch + 1, 0
    return indices, BatchCursor(epoch=epoch, offset=offset)
