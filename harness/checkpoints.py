"""Checkpoints and resume: an append-only index of (step, training state, sampler weights, cursor).

`step` counts completed GRPO steps, so resuming from a checkpoint of step k runs step k next.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness.cost import Tokens
from harness.data import BatchCursor
from harness.jsonl import append_json_line, read_json_lines


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    step: int
    state_path: str
    """Training weights with optimizer state (tinker://.../weights/...)."""
    sampler_path: str
    """Weights for sampling (tinker://.../sampler_weights/...)."""
    cursor: BatchCursor
    seed: int
    """All randomness of the run derives from this seed and the step, so it is the RNG state."""
    tokens: Tokens = dataclasses.field(default_factory=Tokens)
    """The run's token totals after `step` steps, so a resumed run counts on from them."""


def index_path(log_path: str | Path) -> Path:
    return Path(log_path) / "checkpoints" / "index.jsonl"


def save_checkpoint(
    training_client: Any,
    log_path: str | Path,
    step: int,
    cursor: BatchCursor,
    seed: int,
    tokens: Tokens,
) -> Checkpoint:
    """Save state and sampler weights (both submitted before waiting), then record them."""
    name = f"step_{step:06d}"
    state_future = training_client.save_state(name)
    sampler_future = training_client.save_weights_for_sampler(name)
    checkpoint = Checkpoint(
        step=step,
        state_path=state_future.result().path,
        sampler_path=sampler_future.result().path,
        cursor=cursor,
        seed=seed,
        tokens=tokens,
    )
    append_json_line(index_path(log_path), dataclasses.asdict(checkpoint))
    return checkpoint


def last_checkpoint(log_path: str | Path) -> Checkpoint | None:
    """The newest complete entry of the index, or None when there is none."""
    rows = read_json_lines(index_path(log_path))
    return _from_row(rows[-1]) if rows else None


def _from_row(row: dict) -> Checkpoint:
    return Checkpoint(
        step=int(row["step"]),
        state_path=row["state_path"],
        sampler_path=row["sampler_path"],
        cursor=BatchCursor(**row["cursor"]),
        seed=int(row["seed"]),
        # An index written before token accounting counts from its resume point on.
        tokens=Tokens(**row.get("tokens", {})),
    )
