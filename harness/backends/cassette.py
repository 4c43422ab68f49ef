"""Cassettes: every client call of a run as JSON lines, and the exact encoding of their values.

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

Values are JSON where JSON is exact. The rest is tagged: `{"$type": "Datum", <fields>}` for the
dataclasses and pydantic models of `tinker.types`; `{"$type": "TensorData", "dtype", "shape",
"data"}` with the flat data; `{"$ndarray": dtype, "shape", "data"}` for numpy arrays (float32 as
the shortest decimals that read back to the same float32); `{"$float": "nan"}` for non-finite
floats (inside arrays: "NaN", "Infinity", "-Infinity"); `{"$tuple": [...]}`; `{"$dict": [[k, v],
...]}` for dicts whose keys are not plain strings. Fields at a None default are left out.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import tinker
from tinker import types
from tinker.types.topk_logprobs import TopkLogprobs

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


def encode_or_repr(value: Any) -> Any:
    """`encode(value)`, or for a value of no known type its repr: recorded, never rebuilt."""
    try:
        return encode(value)
    except (TypeError, ValueError):  # e.g. a RetryConfig
        return {"$repr": repr(value)}


# -- encoding -------------------------------------------------------------------------------------


def _tinker_classes() -> dict[str, type]:
    classes = {
        name: cls
        for name, cls in vars(types).items()
        if isinstance(cls, type)
        and (dataclasses.is_dataclass(cls) or issubclass(cls, pydantic.BaseModel))
    }
    return {**classes, "TopkLogprobs": TopkLogprobs}


TINKER_CLASSES = _tinker_classes()


def encode(value: Any) -> Any:
    """`value` as JSON-ready data that `decode` turns back into an equal value of the same type."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.ndarray | np.generic):
        return _encode_array(np.asarray(value))
    if isinstance(value, types.TensorData):
        return _encode_tensor_data(value)
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(item) for item in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"$dict": [[encode(k), encode(v)] for k, v in value.items()]}
    name = type(value).__name__
    if TINKER_CLASSES.get(name) is not type(value):
        raise TypeError(f"cannot record a {type(value).__qualname__}: not a tinker.types value")
    return {"$type": name, **{k: encode(v) for k, v in _fields(value).items()}}


def _fields(value: Any) -> dict[str, Any]:
    """The constructor arguments that rebuild `value`, those None by default left out."""
    if isinstance(value, pydantic.BaseModel):
        declared = {
            name: (getattr(value, name), field.default)
            for name, field in type(value).model_fields.items()
        }
        extra = {name: (v, None) for name, v in (value.model_extra or {}).items()}
        return {
            k: v for k, (v, default) in (declared | extra).items() if not _none_default(v, default)
        }
    return {
        f.name: getattr(value, f.name)
        for f in dataclasses.fields(value)
        if f.init and not _none_default(getattr(value, f.name), f.default)
    }


def _none_default(value: Any, default: Any) -> bool:
    return value is None and default is None


def _encode_tensor_data(tensor: types.TensorData) -> dict[str, Any]:
    sparse = tensor.sparse_crow_indices is not None
    values = np.asarray(tensor.data) if sparse else tensor.to_numpy()
    encoded = {
        "$type": "TensorData",
        "dtype": tensor.dtype,
        "shape": tensor.shape,
        "data": _flat_values(values.astype(_NUMPY_DTYPES[tensor.dtype], copy=False)),
    }
    if sparse:
        encoded["sparse_crow_indices"] = tensor.sparse_crow_indices
        encoded["sparse_col_indices"] = tensor.sparse_col_indices
    return encoded


_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64}


def _encode_array(array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind not in "biuf":
        raise TypeError(f"cannot record a numpy array of dtype {array.dtype}")
    return {"$ndarray": array.dtype.name, "shape": list(array.shape), "data": _flat_values(array)}


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _flat_values(array: np.ndarray) -> list[Any]:
    flat = array.ravel()
    if flat.dtype.kind != "f":
        return flat.tolist()
    wide = flat.astype(np.float64)
    if flat.dtype == np.float32:
        # The shortest decimal that reads back (through float64) to the same float32.
        short = flat.astype(str).astype(np.float64)
        wide = np.where(short.astype(np.float32) == flat, short, wide)
    finite = np.isfinite(flat)
    if finite.all():
        return wide.tolist()
    return [
        v if ok else ("NaN" if math.isnan(v) else _NON_FINITE[v])
        for v, ok in zip(wide.tolist(), finite.tolist(), strict=True)
    ]


def decode(tree: Any) -> Any:
    """The value `encode` made `tree` from."""
    if isinstance(tree, list):
        return [decode(item) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if "$type" in tree:
        return _decode_object(tree)
    if "$ndarray" in tree:
        array = np.asarray(tree["data"], dtype=np.dtype(tree["$ndarray"])).reshape(tree["shape"])
        return array[()] if array.ndim == 0 else array
    if "$float" in tree:
        return float(tree["$float"])
    if "$tuple" in tree:
        return tuple(decode(item) for item in tree["$tuple"])
    if "$dict" in tree:
        return {decode(k): decode(v) for k, v in tree["$dict"]}
    if "$repr" in tree:
        raise ValueError(f"{tree['$repr']} was recorded by its repr only and cannot be rebuilt")
    return {k: decode(v) for k, v in tree.items()}


def _decode_object(tree: dict[str, Any]) -> Any:
    name = tree["$type"]
    if name not in TINKER_CLASSES:
        raise ValueError(f"the cassette holds a {name!r}, which is no tinker.types class here")
    fields = {k: v for k, v in tree.items() if k != "$type"}
    if name == "TensorData":
        dtype = fields["dtype"]
        data = np.asarray(fields.pop("data"), dtype=_NUMPY_DTYPES[dtype])
        return types.TensorData(data=data, **fields)
    cls = TINKER_CLASSES[name]
    values = {k: decode(v) for k, v in fields.items()}
    if issubclass(cls, pydantic.BaseModel):
        # As recorded, unvalidated: validation would turn a default's int 1 into 1.0.
        return cls.model_construct(**values)
    return cls(**values)


# -- comparing requests ---------------------------------------------------------------------------

REL_TOLERANCE = 1e-6
ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Difference:
    path: str
    recorded: Any
    replayed: Any

    def describe(self) -> str:
        where = self.path or "(the request)"
        return f"{where}: recorded {show(self.recorded)}, replay {show(self.replayed)}"


def first_difference(recorded: Any, replayed: Any, path: str = "") -> Difference | None:
    """Where two encoded values first differ; floats agree to a relative 1e-6, so float
    arithmetic that differs in the last bits across machines still replays."""
    return next(differences(recorded, replayed, path), None)


def differences(recorded: Any, replayed: Any, path: str = "") -> Iterator[Difference]:
    """Every place where two encoded values differ, in order (lazily: the first costs as
    little as `first_difference` needs)."""
    if _is_number(recorded) and _is_number(replayed):
        if not (
            recorded == replayed
            or (
                (isinstance(recorded, float) or isinstance(replayed, float))
                and math.isclose(recorded, replayed, rel_tol=REL_TOLERANCE, abs_tol=1e-12)
            )
        ):
            yield Difference(path, recorded, replayed)
    elif type(recorded) is type(replayed) and recorded == replayed:
        return  # most requests replay exactly: one comparison at C speed
    elif isinstance(recorded, list) and isinstance(replayed, list):
        for i, (a, b) in enumerate(zip(recorded, replayed, strict=False)):
            yield from differences(a, b, f"{path}[{i}]")
        if len(recorded) != len(replayed):
            yield Difference(f"{path} (length)", len(recorded), len(replayed))
    elif isinstance(recorded, dict) and isinstance(replayed, dict):
        if recorded.get("$type") != replayed.get("$type"):
            yield Difference(path, recorded, replayed)
            return
        keys = [*recorded, *(k for k in replayed if k not in recorded)]
        for key in keys:
            if key != "$type":
                a, b = recorded.get(key, ABSENT), replayed.get(key, ABSENT)
                yield from differences(a, b, _child_path(path, key))
    else:
        yield Difference(path, recorded, replayed)


def request_changes(before: Sequence[Call], after: Sequence[Call]) -> list[str]:
    """What a re-recording changed in the requests, one line per (call, field): how many calls
    differ there and one example. Calls pair by position; list indices are folded into `[*]`,
    so a field that changed in every Datum is one line."""
    names = ([c.name for c in before], [c.name for c in after])
    if [_generic(n) for n in names[0]] != [_generic(n) for n in names[1]]:
        lines = [f"the calls differ: {len(before)} recorded before, {len(after)} now"]
        for position, (old, new) in enumerate(zip(*names, strict=False)):
            if _generic(old) != _generic(new):
                return [*lines, f"  first at call {position}: {old} before, {new} now"]
        return lines
    changed: dict[tuple[str, str], list[Difference]] = {}
    for old, new in zip(before, after, strict=True):
        for difference in differences(old.request, new.request):
            key = (_generic(new.name), re.sub(r"\[\d+\]", "[*]", difference.path))
            changed.setdefault(key, []).append(difference)
    return [
        f"{name} {path or '(the request)'}: {len(found)} calls, e.g. before"
        f" {show(found[0].recorded)}, now {show(found[0].replayed)}"
        for (name, path), found in changed.items()
    ]


def _generic(name: str) -> str:
    """A call's name without the index of its client (`sampling@7.sample` -> `sampling.sample`)."""
    return re.sub(r"@\d+", "", name)


def _child_path(path: str, key: str) -> str:
    if key == "$ndarray":
        return f"{path}.dtype"
    if key.startswith("$"):
        return path  # a tag's payload is the value itself
    return f"{path}.{key}" if path else key


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def show(tree: Any, width: int = 60) -> str:
    """A short, readable form of an encoded value for error messages."""
    if tree is ABSENT:
        return "(default)"
    if isinstance(tree, dict):
        if "$type" in tree:
            return f"{tree['$type']}(...)"
        if "$ndarray" in tree:
            return f"array({tree['$ndarray']}, shape {tree['shape']})"
        if "$float" in tree:
            return tree["$float"]
        return "{" + ", ".join(sorted(tree))[: width - 2] + "}"
    if isinstance(tree, list):
        if len(tree) > 6 or any(isinstance(item, list | dict) for item in tree):
            head = ", ".join(show(item, 12) for item in tree[:4])
            return f"[{head}, ...] ({len(tree)} items)"
        return "[" + ", ".join(show(item, 12) for item in tree) + "]"
    text = repr(tree)
    return text if len(text) <= width else text[: width - 3] + "..."


def match_key(tree: Any) -> str:
    """A key equal for requests that `first_difference` may find equal (numbers rounded), so
    matching by content looks up candidates instead of comparing with each."""

    def rounded(node: Any) -> Any:
        if _is_number(node):
            return float(f"{node:.5g}")
        if isinstance(node, list):
            return [rounded(item) for item in node]
        if isinstance(node, dict):
            return {k: rounded(v) for k, v in node.items()}
        return node

    return json.dumps(rounded(tree), sort_keys=True)


# -- secrets --------------------------------------------------------------------------------------

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# Shorter values ("1", "true") are no credentials, and scrubbing them would corrupt the data.
MIN_SECRET_LENGTH = 8


def secrets_in(environ: Mapping[str, str]) -> dict[str, str]:
    """{value: variable name} of every environment variable whose name says it holds a secret
    (TOKENIZERS_PARALLELISM and the like do not count)."""
    found = {}
    for name, value in environ.items():
        words = name.upper().replace("TOKENIZER", "")
        if any(part in words for part in SECRET_NAME_PARTS) and len(value) >= MIN_SECRET_LENGTH:
            found[value] = name
    return found


def scrub(tree: Any, secrets: Mapping[str, str]) -> Any:
    """`tree` with every secret value in its strings replaced by `<redacted:NAME>`."""
    if isinstance(tree, str):
        for value in sorted(secrets, key=len, reverse=True):
            tree = tree.replace(value, f"<redacted:{secrets[value]}>")
        return tree
    if isinstance(tree, list):
        return [scrub(item, secrets) for item in tree]
    if isinstance(tree, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in tree.items()}
    return tree


def dumps_line(tree: Any, secrets: Mapping[str, str]) -> str:
    """One JSON line, secrets scrubbed (the tree is walked only if a secret shows in the text)."""
    text = json.dumps(tree, separators=(",", ":"), allow_nan=False)
    if any(json.dumps(value)[1:-1] in text for value in secrets):
        text = json.dumps(scrub(tree, secrets), separators=(",", ":"), allow_nan=False)
    return text


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
