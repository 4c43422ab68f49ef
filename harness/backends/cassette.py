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
since the recording began and `latency_s` seconds from submission to result. Lines are appended
as results arrive, so they are in completion order; a line cut short by a kill is skipped on
reading. A line `{"step_scores": k, "rewards": ..., "advantages": ...}` keeps step k's (P, G)
rewards and advantages, for a replay to say which step's differ first.

Values are encoded by `cassette_codec`, compared by `cassette_compare`; the recorder
(`record.py`) scrubs secrets before a line is written.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tinker

from harness.backends.cassette_codec import decode, encode_or_repr

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
    kind: str, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """A call's arguments by name under the SDK's signature, those at their default left out,
    encoded. Positional or keyword, explicit default or omitted: the same request."""
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
        name: "<redacted>" if name in SECRET_ARGUMENTS else _joined_text(encode_or_repr(value))
        for name, value in arguments.items()
    }


def _joined_text(tree: Any) -> Any:
    """`tree` with each run of adjacent text chunks of a ModelInput joined into one: how a
    token sequence is split into chunks is the client's bookkeeping, not part of the request."""
    if isinstance(tree, list):
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

    @property
    def config(self) -> dict[str, Any]:
        return self.header.get("config") or {}


def read_header(path: str | Path) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as f:
        return _header(Path(path), f.readline())


def _header(path: Path, line: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        raise CassetteError(f"{path} has no cassette header on its first line") from None
    if not isinstance(header, dict) or "cassette" not in header:
        raise CassetteError(f"{path} has no cassette header on its first line")
    if header["cassette"] != FORMAT:
        raise CassetteError(
            f"{path} is cassette format {header['cassette']}; this harness reads format {FORMAT}"
        )
    return header


def read_cassette(path: str | Path) -> Cassette:
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    header = _header(path, lines[0] if lines else "")
    calls, scores = [], {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # cut short by a kill mid-write
            raise CassetteError(f"{path}:{number} is not a JSON line") from None
        if "step_scores" in row:
            scores[row["step_scores"]] = (decode(row["rewards"]), decode(row["advantages"]))
        else:
            calls.append(Call(**row))
    calls.sort(key=lambda call: call.index)
    return Cassette(path, header, _until_first_gap(calls), scores)


def _until_first_gap(calls: list[Call]) -> list[Call]:
    """Calls whose results never came (the run died) end the recording: what follows them
    happened concurrently and cannot be replayed in order."""
    for position, call in enumerate(calls):
        if call.index != position:
            return calls[:position]
    return calls
