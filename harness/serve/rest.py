"""The REST surface of `tinker.RestClient`: training runs and their checkpoints, from storage.

A training run is what its saved checkpoints say about it (a run appears once it has saved
one, and outlives the server process), so every answer here is a pure function of the store's
records. Listings are newest first.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from tinker import types

from harness.backends.local.storage import Saved

OWNER = "local"  # the server has no users: every run belongs to whoever holds the key
_CHECKPOINT_TYPES: dict[str, types.CheckpointType] = {
    "weights": "training",
    "sampler_weights": "sampler",
}


def checkpoint(record: Saved) -> types.Checkpoint:
    expires_at = record.meta.expires_at
    return types.Checkpoint(
        checkpoint_id=f"{record.path.kind}/{record.path.name}",
        checkpoint_type=_CHECKPOINT_TYPES[record.path.kind],
        time=_time(record.saved_at),
        tinker_path=str(record.path),
        size_bytes=record.size_bytes,
        user_metadata=record.meta.user_metadata,
        expires_at=None if expires_at is None else _time(expires_at),
    )


def checkpoints_newest_first(records: Sequence[Saved]) -> list[types.Checkpoint]:
    return [checkpoint(r) for r in sorted(records, key=lambda r: r.saved_at, reverse=True)]


def training_run(run_id: str, records: Sequence[Saved]) -> types.TrainingRun:
    """The run `records` (its checkpoints, at least one) describe."""
    latest = max(records, key=lambda r: r.saved_at)
    lora = latest.meta.lora
    return types.TrainingRun(
        training_run_id=run_id,
        base_model=latest.meta.base_model,
        model_owner=OWNER,
        is_lora=lora is not None,
        lora_rank=None if lora is None else lora.rank,
        last_request_time=_time(latest.saved_at),
        last_checkpoint=_latest(records, "weights"),
        last_sampler_checkpoint=_latest(records, "sampler_weights"),
    )


def training_runs_newest_first(records: Sequence[Saved]) -> list[types.TrainingRun]:
    by_run: dict[str, list[Saved]] = {}
    for record in records:
        by_run.setdefault(record.path.run_id, []).append(record)
    runs = [training_run(run_id, saved) for run_id, saved in by_run.items()]
    return sorted(runs, key=lambda run: run.last_request_time, reverse=True)


def page(total: int, limit: int, offset: int) -> tuple[slice, types.Cursor]:
    """The slice of a listing a `limit`/`offset` request asks for, and its cursor."""
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
    return slice(offset, offset + limit), types.Cursor(
        offset=offset, limit=limit, total_count=total
    )


def _latest(records: Sequence[Saved], kind: str) -> types.Checkpoint | None:
    of_kind = [r for r in records if r.path.kind == kind]
    return checkpoint(max(of_kind, key=lambda r: r.saved_at)) if of_kind else None


def _time(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
