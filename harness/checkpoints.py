"""Checkpoints and resume: an append-only index of (step, training state, sampler weights, cursor).

`step` counts completed GRPO steps, so resuming from a checkpoint of step k runs step k next.
Besides the periodic checkpoints (`index.jsonl`), rolling saves (`rolling.jsonl`: training
state only, short-lived, the previous one released) bound what a fault makes the run redo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tinker

from harness.config import MIN_TTL_S
from harness.cost import Tokens
from harness.data import BatchCursor
from harness.jsonl import append_json_line, numbered_json_lines

FIELDS = ("step", "state_path", "sampler_path", "cursor", "seed")


class RunStateError(ValueError):
    """A run folder whose state cannot be resumed as it is; the message is one line and says
    which file (and line) and what to do."""


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


def rolling_index_path(log_path: str | Path) -> Path:
    return Path(log_path) / "checkpoints" / "rolling.jsonl"


def checkpoint_name(step: int) -> str:
    """The name a periodic checkpoint after `step` steps is saved under."""
    return f"step_{step:06d}"


def rolling_name(step: int) -> str:
    """The name a rolling save after `step` steps is saved under."""
    return f"rolling_{step:06d}"


_SAVED_NAME = re.compile(r"(?:step|rolling)_(\d{6})")


def step_of(path: str) -> int | None:
    """The step a checkpoint's path names (its last part, `checkpoint_name` or
    `rolling_name`), or None for a path not saved by the loop."""
    found = _SAVED_NAME.fullmatch(path.rstrip("/").rsplit("/", 1)[-1])
    return int(found.group(1)) if found else None


def save_checkpoint(
    training_client: Any,
    log_path: str | Path,
    step: int,
    cursor: BatchCursor,
    seed: int,
    tokens: Tokens,
    *,
    wait: Callable[[Any, str], Any] = lambda future, name: future.result(),
    ttl_seconds: int | None = None,
    overwrite: bool = False,
) -> Checkpoint:
    """Save state and sampler weights (both submitted before waiting), then record them.
    `wait(future, name)` waits for a result; `overwrite` replaces a save of the same step
    (when a step is redone, its first save may have been applied)."""
    name = checkpoint_name(step)
    state_future = training_client.save_state(
        name, **_save_options(ttl_seconds), **({"overwrite": True} if overwrite else {})
    )
    sampler_future = training_client.save_weights_for_sampler(name, **_save_options(ttl_seconds))
    checkpoint = Checkpoint(
        step=step,
        state_path=wait(state_future, f"save_state({name})").path,
        sampler_path=wait(sampler_future, f"save_weights_for_sampler({name})").path,
        cursor=cursor,
        seed=seed,
        tokens=tokens,
    )
    append_json_line(index_path(log_path), dataclasses.asdict(checkpoint))
    return checkpoint


def save_rolling(
    training_client: Any,
    log_path: str | Path,
    step: int,
    cursor: BatchCursor,
    seed: int,
    tokens: Tokens,
    *,
    wait: Callable[[Any, str], Any] = lambda future, name: future.result(),
    release: Callable[[str], None] | None = None,
) -> Checkpoint:
    """Save the training state alone as the rolling resume point of `step`, short-lived (the
    service's minimum lifetime: long enough to resume a run that died), then `release` the
    one it replaces (storage is billed; a release that fails is left to the TTL)."""
    previous = _entries(rolling_index_path(log_path))[-1:]
    name = rolling_name(step)
    future = training_client.save_state(name, ttl_seconds=MIN_TTL_S, overwrite=True)
    path = wait(future, f"save_state({name})").path
    checkpoint = Checkpoint(
        step=step, state_path=path, sampler_path="", cursor=cursor, seed=seed, tokens=tokens
    )
    append_json_line(rolling_index_path(log_path), dataclasses.asdict(checkpoint))
    if release is not None and previous and previous[0].state_path != path:
        with contextlib.suppress(Exception):
            release(previous[0].state_path)
    return checkpoint


def _save_options(ttl_seconds: int | None) -> dict[str, int]:
    # Left out when unset, so a run without --ttl_seconds sends what it always sent.
    return {} if ttl_seconds is None else {"ttl_seconds": ttl_seconds}


def checkpoints(log_path: str | Path) -> list[Checkpoint]:
    """The entries of the index, oldest first. A line a kill cut short is skipped; an entry
    that reads as JSON but lacks a field is an error naming its line."""
    return _entries(index_path(log_path))


def resume_points(log_path: str | Path) -> list[Checkpoint]:
    """Every saved state a run can resume from, oldest first: the periodic checkpoints and
    the newest rolling save (each released the one before it), after a checkpoint of its step."""
    rolling, periodic = _entries(rolling_index_path(log_path))[-1:], checkpoints(log_path)
    return sorted([*rolling, *periodic], key=lambda c: c.step)


def _entries(path: Path) -> list[Checkpoint]:
    entries = []
    for number, row in numbered_json_lines(path):
        missing = [name for name in FIELDS if not isinstance(row, dict) or name not in row]
        try:
            if missing:
                raise KeyError(", ".join(missing))
            entries.append(_from_row(row))
        except (KeyError, TypeError, ValueError) as e:
            raise RunStateError(
                f"{path}:{number}: incomplete checkpoint entry ({e}); remove that line to"
                " resume from the entry before it"
            ) from None
    return entries


def last_checkpoint(log_path: str | Path) -> Checkpoint | None:
    """The newest entry of the index, or None when there is none."""
    entries = checkpoints(log_path)
    return entries[-1] if entries else None


def unloadable(error: BaseException) -> bool:
    """Whether loading a checkpoint failed because of the checkpoint (gone, expired, not a
    checkpoint), not because of the service: then an older one may still load."""
    if isinstance(error, FileNotFoundError | tinker.NotFoundError):
        return True
    return isinstance(error, tinker.RequestFailedError) and error.category == "user"


def _from_row(row: dict) -> Checkpoint:
    return Checkpoint(
        step=int(row["step"]),
        state_path=str(row["state_path"]),
        sampler_path=str(row["sampler_path"]),
        cursor=BatchCursor(**row["cursor"]),
        seed=int(row["seed"]),
        # An index written before token accounting counts from its resume point on.
        tokens=Tokens(**row.get("tokens", {})),
    )
