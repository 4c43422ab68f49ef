"""`tinker://<run_id>/<kind>/<name>` paths <-> checkpoint directories under a storage root.

Everything lives under one root, so a run can keep its checkpoints in its own log folder and a
new process with the same root resolves every path it was handed. The base model's directory in
a checkpoint's metadata is relative to the root, so metadata names no absolute directory of the
machine that saved it (where that directory is gone, loading falls back to the base model's
name). A checkpoint saved with `ttl_seconds`
expires that long after it was saved, on the store's wall clock (injected): from then on it is
gone, deleted the first time anything looks for it. What a checkpoint directory holds is
`checkpoint_format.py`'s.
"""

import dataclasses
import datetime
import itertools
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .checkpoint_format import (
    KINDS,
    META_FILE,
    CheckpointMeta,
    Kind,
    optimizer_steps,
    read_meta,
    write_meta,
)

SCHEME = "tinker://"
# \Z, not $: $ also matches before a final newline, which would let "name\n" through.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# Cloud run ids look like `<session>:train:<n>`; accepting ':' lets such a path fail as "not
# found here" rather than as malformed.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
# Tinker's server refuses shorter lifetimes; the same floor keeps a local run honest.
MIN_TTL_SECONDS = 3600


@dataclass(frozen=True)
class TinkerPath:
    run_id: str
    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.run_id}/{self.kind}/{self.name}"


def check_name(name: str) -> str:
    """A checkpoint name is one path segment: letters, digits, '.', '_' and '-'."""
    if not isinstance(name, str) or not _SEGMENT.match(name):
        raise ValueError(
            f"checkpoint name {name!r} must be one path segment of letters, digits, '.', '_'"
            " or '-' (and not start with '.', '_' or '-')"
        )
    return name


def parse(path: str) -> TinkerPath:
    """Parse a path of exactly three segments after the scheme."""
    if not isinstance(path, str) or not path.startswith(SCHEME):
        raise ValueError(f"{path!r} is not a tinker path (tinker://<run_id>/<kind>/<name>)")
    parts = path[len(SCHEME) :].split("/")
    if (
        len(parts) != 3
        or not _RUN_ID.match(parts[0])
        or parts[1] not in KINDS
        or not _SEGMENT.match(parts[2])
    ):
        raise ValueError(
            f"{path!r} is not a tinker path of the form tinker://<run_id>/weights/<name>"
            " or tinker://<run_id>/sampler_weights/<name>"
        )
    return TinkerPath(parts[0], cast(Kind, parts[1]), parts[2])


@dataclass(frozen=True)
class Saved:
    """A checkpoint on disk: its path, metadata, when it was saved and its size."""

    path: TinkerPath
    meta: CheckpointMeta
    saved_at: float  # seconds since the epoch
    size_bytes: int


class CheckpointStore:
    """Maps tinker paths to directories `<root>/<run_id>/<kind>/<name>/`."""

    def __init__(self, root: str | Path, clock: Callable[[], float] = time.time):
        self.root = Path(root).expanduser().resolve()
        self.session = uuid.uuid4().hex[:12]
        self._runs = itertools.count()
        self._clock = clock

    def new_run_id(self) -> str:
        return f"local-{self.session}-train-{next(self._runs)}"

    def directory(self, path: TinkerPath) -> Path:
        return self.root / path.run_id / path.kind / path.name

    # -- metadata paths and lifetimes ---------------------------------------------------------

    def relative(self, directory: Path) -> str:
        """`directory` as metadata stores it: relative to the root."""
        return os.path.relpath(Path(directory).resolve(), self.root)

    def absolute(self, stored: str) -> Path:
        """A directory metadata names (relative to the root, or absolute in older checkpoints)."""
        return (self.root / stored).resolve()

    def lifetime(self, ttl_seconds: int | None) -> tuple[float, float | None]:
        """`saved_at` and `expires_at` of a checkpoint saved now."""
        if ttl_seconds is not None and ttl_seconds < MIN_TTL_SECONDS:
            raise ValueError(
                f"ttl_seconds must be at least {MIN_TTL_SECONDS} (as Tinker requires), or None"
                f" to keep the checkpoint until deleted; got {ttl_seconds}"
            )
        now = self._clock()
        return now, None if ttl_seconds is None else now + ttl_seconds

    def _expired(self, meta: CheckpointMeta) -> bool:
        return meta.expires_at is not None and meta.expires_at <= self._clock()

    # -- finding, listing, deleting -----------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The checkpoint directory of `path`, which must exist (unexpired) under the root."""
        parsed = parse(path)
        directory = self.directory(parsed)
        if not (directory / META_FILE).is_file():
            raise FileNotFoundError(
                f"no checkpoint at {path} on this server (checkpoints live in the storage_dir"
                " the server or backend was started with)"
            )
        meta = read_meta(directory)
        if self._expired(meta):
            shutil.rmtree(directory, ignore_errors=True)
            raise FileNotFoundError(
                f"checkpoint {path} expired at {_iso(meta.expires_at)} (its ttl_seconds ran"
                " out) and is deleted"
            )
        return directory

    def saved(self, run_id: str | None = None) -> list[Saved]:
        """Unexpired checkpoints, of one run or of all, oldest first; expired ones are deleted."""
        if run_id is not None and not _RUN_ID.match(run_id):
            return []
        runs = [run_id] if run_id is not None else sorted(self._run_dirs())
        found = []
        for run in runs:
            for kind in KINDS:
                for directory in sorted((self.root / run / kind).glob(f"*/{META_FILE}")):
                    if (
                        record := self.find(TinkerPath(run, kind, directory.parent.name))
                    ) is not None:
                        found.append(record)
        return sorted(found, key=lambda record: record.saved_at)

    def _run_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [entry.name for entry in self.root.iterdir() if _RUN_ID.match(entry.name)]

    def find(self, path: TinkerPath) -> Saved | None:
        """The unexpired checkpoint at `path`, or None (deleting it if it expired)."""
        directory = self.directory(path)
        try:
            meta = read_meta(directory)
            files = [f for f in directory.iterdir() if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            saved_at = meta.saved_at or (directory / META_FILE).stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):  # deleted while we looked
            return None
        if self._expired(meta):
            shutil.rmtree(directory, ignore_errors=True)
            return None
        return Saved(path, meta, saved_at, size)

    def delete(self, path: str) -> None:
        """Remove the checkpoint at `path` (FileNotFoundError if there is none)."""
        shutil.rmtree(self.resolve(path))

    def set_ttl(self, path: str, ttl_seconds: int | None) -> None:
        """Let the checkpoint at `path` expire `ttl_seconds` from now (None: never)."""
        self.set_expires_at(path, self.lifetime(ttl_seconds)[1])

    def set_expires_at(self, path: str, expires_at: float | None) -> None:
        """Let the checkpoint at `path` expire at `expires_at` on the store's clock (None:
        never), whatever the minimum TTL (weather profiles expire checkpoints early)."""
        directory = self.resolve(path)
        write_meta(directory, dataclasses.replace(read_meta(directory), expires_at=expires_at))

    def now(self) -> float:
        """The store's clock: what checkpoint lifetimes run on."""
        return self._clock()


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


def saved_optimizer_steps(storage_dir: str | Path, state_path: str) -> int:
    """How many steps the optimizer had taken when `state_path` (from save_state) was saved
    under `storage_dir`: the count AdamW keeps with its moments, not one the caller kept."""
    # Read as it lies, lifetime aside: an inspection must not delete what expired since.
    return optimizer_steps(CheckpointStore(storage_dir).directory(parse(state_path)))
