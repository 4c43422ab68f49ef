"""`tinker://<run_id>/<kind>/<name>` paths <-> checkpoint directories under a storage root.

Everything lives under one root, so a run can keep its checkpoints in its own log folder and a
new process with the same root resolves every path it was handed.
"""

import itertools
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

Kind = Literal["weights", "sampler_weights"]
SCHEME = "tinker://"
KINDS: tuple[Kind, ...] = ("weights", "sampler_weights")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Cloud run ids look like `<session>:train:<n>`; accepting ':' lets such a path fail as "not
# found here" rather than as malformed.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
META_FILE = "checkpoint.json"


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


class CheckpointStore:
    """Maps tinker paths to directories `<root>/<run_id>/<kind>/<name>/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.session = uuid.uuid4().hex[:12]
        self._runs = itertools.count()

    def new_run_id(self) -> str:
        return f"local-{self.session}-train-{next(self._runs)}"

    def directory(self, path: TinkerPath) -> Path:
        return self.root / path.run_id / path.kind / path.name

    def resolve(self, path: str) -> Path:
        """The checkpoint directory of `path`, which must exist under this store's root."""
        parsed = parse(path)
        directory = self.directory(parsed)
        if not (directory / META_FILE).is_file():
            raise FileNotFoundError(
                f"no checkpoint at {path}: expected it in {directory} (the local backend keeps"
                " checkpoints under the storage_dir it was created with)"
            )
        return directory


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((directory / META_FILE).read_text())
