"""Cassettes: the file format (every client call of a run as JSON lines) and the registry of
which SDK calls are recorded.

A cassette is a JSONL file. Its first line is the header (format, harness and `tinker` versions,
backend, model, the run's config, the reward, the plugged functions' sources and digests); every
other line is one call:

    {"index": 7, "client": "sampling@5", "method": "sample", "request": {...},
     "response": {...} | "error": {...}, "submitted_s": 1.25, "latency_s": 0.31}

`index` is the call's order at submission, `client` the client it was made on (`service`, or
`<kind>@<index of the call that created it>`), `request` the call's arguments by name (those at
their SDK default left out, a ModelInput's adjacent text chunks joined), `submitted_s` seconds
since the recording began and `latency_s` seconds from submission to result; a `sample` call
also has `"purpose": "rollout" | "evaluation"`, what the loop sampled it for. Lines are appended
as results arrive, so they are in completion order; a line cut short by a kill is skipped on
reading. A line `{"step_scores": k, "rewards": ..., "advantages": ...}` keeps step k's (P, G)
rewards and advantages, for a replay to say which step's differ first.

Values are encoded by `cassette_codec`, compared by `cassette_compare`; the recorder
(`record.py`) scrubs secrets before a line is written.

A path that does not end in `.jsonl` gets the binary format: `BINARY_MAGIC`, then one record
per row (the header, a call, a step's scores), each a little-endian (u32, u64) of the sizes of
its meta and its body, the meta (uncompressed JSON: `{"header": 1}`, `{"index", "client",
"method"}` or `{"step_scores": k}`: what the index reads) and the body, zstd-compressed: a u32
size of the row's JSON, the JSON with each array's numbers left out (`{"$array": i}`), then
the arrays' bytes (`{"$arrays": [[dtype, count], ...]}` in the JSON says how to cut them).
Both formats read back to the same rows. The metas are the index: `read_cassette(path,
segment=k)` finds where step k's calls lie from them alone and decompresses only those.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import tinker
import zstandard

from harness.backends.cassette_codec import (
    JSON_LEAVES,
    decode,
    encode_or_repr,
    loads_with_arrays,
)

FORMAT = 1

# -- which calls are recorded ---------------------------------------------------------------------

SDK_CLIENTS = {
    "service": tinker.ServiceClient,
    "training": tinker.TrainingClient,
    "sampling": tinker.SamplingClient,
}
FUTURE_METHODS = {
    "service": frozenset(
        {
            "create_lora_training_client",
            "create_training_client_from_state",
            "create_training_client_from_state_with_optimizer",
            "create_sampling_client",
        }
    ),
    "training": frozenset(
        {
            "forward",
            "forward_backward",
            "optim_step",
            "save_state",
            "save_weights_for_sampler",
            "save_weights_and_get_sampling_client",
            "create_sampling_client",
        }
    ),
    "sampling": frozenset({"sample", "compute_logprobs"}),
}
SYNC_METHODS = {
    "service": frozenset(),
    "training": frozenset({"get_tokenizer", "get_info"}),
    "sampling": frozenset({"get_tokenizer", "get_base_model"}),
}
# The kind of client a call's result is.
CLIENT_RESULTS = {
    "create_lora_training_client": "training",
    "create_training_client_from_state": "training",
    "create_training_client_from_state_with_optimizer": "training",
    "create_sampling_client": "sampling",
    "save_weights_and_get_sampling_client": "sampling",
}
# Calls on these clients must replay in recorded order; sampling calls within a step need not.
ORDERED_KINDS = frozenset({"service", "training"})
# Arguments that are credentials themselves.
SECRET_ARGUMENTS = frozenset({"api_key", "weights_access_token"})


def client_kind(client_id: str) -> str:
    return client_id.split("@")[0]


def canonical_request(
    kind: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    arrays: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """A call's arguments by name under the SDK's signature, those at their default left out,
    encoded (with `arrays`, as the binary format keeps them). Positional or keyword, explicit
    default or omitted: the same request."""
    signature = inspect.signature(getattr(SDK_CLIENTS[kind], method))
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:  # a backend beyond the SDK's surface: keep the call as it was made
        arguments = {"*args": list(args), **kwargs}
    else:
        arguments = {
            name: value
            for name, value in list(bound.arguments.items())[1:]
            if not _is_default(value, signature.parameters[name].default)
        }
    return {
        name: "<redacted>"
        if name in SECRET_ARGUMENTS
        else _joined_text(encode_or_repr(value, arrays))
        for name, value in arguments.items()
    }


def _joined_text(tree: Any) -> Any:
    """`tree` with each run of adjacent text chunks of a ModelInput joined into one: how a
    token sequence is split into chunks is the client's bookkeeping, not part of the request."""
    if isinstance(tree, list):
        if all(map(JSON_LEAVES.__contains__, map(type, tree))):  # a chunk's tokens, at C speed
            return list(tree)
        return [_joined_text(item) for item in tree]
    if not isinstance(tree, dict) or tree.get("$type") == "TensorData" or "$ndarray" in tree:
        return tree  # arrays hold no ModelInput: their numbers are not walked
    if tree.get("$type") != "ModelInput":
        return {k: _joined_text(v) for k, v in tree.items()}
    chunks: list[Any] = []
    for chunk in tree["chunks"]:
        if _is_text(chunk) and chunks and _is_text(chunks[-1]):
            chunks[-1] = {**chunks[-1], "tokens": chunks[-1]["tokens"] + chunk["tokens"]}
        else:
            chunks.append(chunk)
    return {**tree, "chunks": chunks}


def _is_text(chunk: Any) -> bool:
    return isinstance(chunk, dict) and chunk.get("$type") == "EncodedTextChunk"


def _is_default(value: Any, default: Any) -> bool:
    if default is inspect.Parameter.empty:
        return False
    if default is None or value is None:
        return value is default
    return (
        type(value) is type(default)
        and isinstance(value, bool | int | float | str)
        and (value == default)
    )


# -- reading --------------------------------------------------------------------------------------


class CassetteError(ValueError):
    """A file that is not a readable cassette."""


@dataclasses.dataclass(frozen=True)
class Call:
    index: int
    client: str
    method: str
    request: dict[str, Any]
    response: Any = None
    error: dict[str, str] | None = None
    submitted_s: float = 0.0
    latency_s: float = 0.0
    purpose: str | None = None
    """A sample call's `harness.rollouts.Purpose` as the loop marked it; None on other calls,
    and on every call of a cassette recorded before the mark (see `cassette_view.purpose_of`)."""

    @property
    def name(self) -> str:
        return f"{self.client}.{self.method}"

    @property
    def ordered(self) -> bool:
        return client_kind(self.client) in ORDERED_KINDS


@dataclasses.dataclass(frozen=True)
class Cassette:
    path: Path
    header: dict[str, Any]
    calls: list[Call]
    """In order of submission; a run killed mid-call ends before that call."""
    scores: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    """Each recorded step's (rewards_P_G, advantages_P_G)."""
    first_segment: int = 0
    """Read with `segment=k`: k, the number of steps before the calls it holds."""
    segments: int | None = None
    """Read with `segment=k`: the number of steps the whole cassette holds."""

    @property
    def config(self) -> dict[str, Any]:
        return recorded_flags(self.header)


# Flags a cassette recorded before they existed was recorded under, where that is not today's
# default: before streaming, every step ran in the serial order.
PREDATING_FLAGS = {"stream_training": False}


def recorded_flags(header: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded run's flags, those it predates at the values it ran with."""
    return {**PREDATING_FLAGS, **(header.get("config") or {})}


def read_header(path: str | Path) -> dict[str, Any]:
    if is_binary(path):
        with Path(path).open("rb") as f:
            for meta, body in _records(f, Path(path)):
                return _checked_header(Path(path), _row(body()) if "header" in meta else None)
        return _checked_header(Path(path), None)
    with Path(path).open(encoding="utf-8") as f:
        return _header(Path(path), f.readline())


def _header(path: Path, line: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        raise CassetteError(f"{path} has no cassette header on its first line") from None
    return _checked_header(path, header)


def _checked_header(path: Path, header: Any) -> dict[str, Any]:
    if not isinstance(header, dict) or "cassette" not in header:
        raise CassetteError(f"{path} has no cassette header on its first line")
    if header["cassette"] != FORMAT:
        raise CassetteError(
            f"{path} is cassette format {header['cassette']}; this harness reads format {FORMAT}"
        )
    return header


def read_cassette(
    path: str | Path, segment: int | None = None, arrays_as_lists: bool = True
) -> Cassette:
    """The cassette at `path` (either format); with `segment=k`, only the calls before the
    first fresh sampler (the run's setup) and those of the k-th step (from the k-th
    `save_weights_and_get_sampling_client` to the next, in submission order), read without
    the rest of a binary file. With `arrays_as_lists=False` a binary cassette's arrays stay
    numpy arrays in the calls' trees: for a reader that only `decode`s them (the viewer), not
    for replay, which compares the trees with its requests."""
    path = Path(path)
    if is_binary(path):
        header, rows, count = _binary_rows(path, segment, arrays_as_lists)
    else:
        header, rows = _json_rows(path)
    calls, scores = [], {}
    for row in rows:
        if "step_scores" in row:
            scores[row["step_scores"]] = (decode(row["rewards"]), decode(row["advantages"]))
        else:
            calls.append(Call(**row))
    calls.sort(key=lambda call: call.index)
    if segment is None:
        return Cassette(path, header, _until_first_gap(calls), scores)
    if is_binary(path):
        segments = count
    else:
        calls, segments = _segment_calls(_until_first_gap(calls), segment)
    return Cassette(path, header, calls, scores, first_segment=segment, segments=segments)


def _json_rows(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = _header(path, lines[0] if lines else "")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # cut short by a kill mid-write
            raise CassetteError(f"{path}:{number} is not a JSON line") from None
    return header, rows


FRESH_SAMPLER = "save_weights_and_get_sampling_client"


def _segment_calls(calls: list[Call], segment: int) -> tuple[list[Call], int]:
    """The setup calls and the `segment`-th step's, of calls in submission order; and the
    number of steps."""
    starts = [i for i, call in enumerate(calls) if call.method == FRESH_SAMPLER]
    if segment >= len(starts):
        return calls[: starts[0] if starts else len(calls)], len(starts)
    end = starts[segment + 1] if segment + 1 < len(starts) else len(calls)
    return calls[: starts[0]] + calls[starts[segment] : end], len(starts)


# -- the binary format ----------------------------------------------------------------------------

BINARY_MAGIC = b"GRPO-CASSETTE 2\n"
_SIZES = struct.Struct("<IQ")  # meta bytes, body bytes
_JSON_SIZE = struct.Struct("<I")


def is_binary(path: str | Path) -> bool:
    """Whether the file at `path` is a binary cassette (by its first bytes)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(len(BINARY_MAGIC)) == BINARY_MAGIC
    except FileNotFoundError:
        return False


def binary_path(path: str | Path) -> bool:
    """Whether a cassette recorded to `path` gets the binary format (all but `.jsonl`)."""
    return Path(path).suffix != ".jsonl"


class BinaryWriter:
    """Appends records to a binary cassette; each is whole on disk before the next begins."""

    def __init__(self, file: IO[bytes]):
        self._file = file
        self._compressor = zstandard.ZstdCompressor(level=3)
        file.write(BINARY_MAGIC)

    def write(self, meta: Mapping[str, Any], text: str, arrays: list[np.ndarray]) -> int:
        """One record: `text` is the row's JSON (its arrays as `{"$array": i}`); returns the
        bytes written."""
        layout = [[array.dtype.str, int(array.size)] for array in arrays]
        payload = json.dumps({"$arrays": layout, "row": "$"}, separators=(",", ":"))
        row_json = payload.replace('"$"', text, 1).encode("utf-8")
        body = self._compressor.compress(
            b"".join([_JSON_SIZE.pack(len(row_json)), row_json, *(a.tobytes() for a in arrays)])
        )
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        record = _SIZES.pack(len(meta_bytes), len(body)) + meta_bytes + body
        self._file.write(record)
        self._file.flush()
        return len(record)


def _records(file: IO[bytes], path: Path) -> Iterator[tuple[dict[str, Any], Any]]:
    """(meta, a function reading the body) per whole record; the bodies are read only when
    asked, so an index scan reads the metas alone."""
    if file.read(len(BINARY_MAGIC)) != BINARY_MAGIC:
        raise CassetteError(f"{path} is not a binary cassette")
    while True:
        sizes = file.read(_SIZES.size)
        if len(sizes) < _SIZES.size:
            return  # the end, or a record cut short by a kill
        meta_size, body_size = _SIZES.unpack(sizes)
        meta_bytes = file.read(meta_size)
        start = file.tell()
        if len(meta_bytes) < meta_size or file.seek(0, 2) < start + body_size:
            return
        file.seek(start + body_size)

        def body(start: int = start, size: int = body_size) -> bytes:
            file.seek(start)
            return file.read(size)

        yield json.loads(meta_bytes), body


def _row(body: bytes, as_lists: bool = True) -> dict[str, Any]:
    data = zstandard.ZstdDecompressor().decompress(body)
    (size,) = _JSON_SIZE.unpack_from(data)

    def arrays_of(payload: dict[str, Any]) -> list[np.ndarray]:
        arrays, offset = [], _JSON_SIZE.size + size
        for dtype, count in payload["$arrays"]:
            array = np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=offset)
            arrays.append(array)
            offset += array.nbytes
        return arrays

    text = data[_JSON_SIZE.size : _JSON_SIZE.size + size]
    return loads_with_arrays(text, arrays_of, as_lists)["row"]


def _binary_rows(
    path: Path, segment: int | None, as_lists: bool
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The header, the rows `segment` asks for (all when None), and the number of steps."""
    with path.open("rb") as f:
        records = list(_records(f, path))
        if not records or "header" not in records[0][0]:
            _checked_header(path, None)
        header = _checked_header(path, _row(records[0][1]()))
        wanted, count = _wanted([meta for meta, _ in records[1:]], segment)
        rows = [_row(body(), as_lists) for meta, body in records[1:] if wanted(meta)]
    return header, rows, count


def _wanted(metas: list[dict[str, Any]], segment: int | None):
    """Which records `read_cassette(segment=...)` reads (all, or the setup and one step's,
    up to the first call whose result never came), from their metas alone; and the number
    of steps."""
    indices = {meta["index"] for meta in metas if "index" in meta}
    gap = next(i for i in range(len(indices) + 1) if i not in indices)
    starts = sorted(
        meta["index"]
        for meta in metas
        if meta.get("method") == FRESH_SAMPLER and meta["index"] < gap
    )
    if segment is None:
        return (lambda meta: True), len(starts)
    setup_end = starts[0] if starts else gap
    first, end = gap, gap
    if segment < len(starts):
        first, end = starts[segment], starts[segment + 1] if segment + 1 < len(starts) else gap

    def wanted(meta: dict[str, Any]) -> bool:
        index = meta.get("index")
        if index is None:
            return True  # a step's scores: small, and keyed by the run's step number
        return index < setup_end or first <= index < end

    return wanted, len(starts)


def _until_first_gap(calls: list[Call]) -> list[Call]:
    """Calls whose results never came (the run died) end the recording: what follows them
    happened concurrently and cannot be replayed in order."""
    for position, call in enumerate(calls):
        if call.index != position:
            return calls[:position]
    return calls
