"""The exact encoding of a cassette's values: `tinker.types` objects, numpy arrays and plain data
as JSON-ready trees, and back.

Values are JSON where JSON is exact. The rest is tagged: `{"$type": "Datum", <fields>}` for the
dataclasses and pydantic models of `tinker.types`; `{"$type": "TensorData", "dtype", "shape",
"data"}` with the flat data; `{"$ndarray": dtype, "shape", "data"}` for numpy arrays (float32 as
the shortest decimals that read back to the same float32); `{"$float": "nan"}` for non-finite
floats (inside arrays: "NaN", "Infinity", "-Infinity"); `{"$tuple": [...]}`; `{"$dict": [[k, v],
...]}` for dicts whose keys are not plain strings. Fields at a None default are left out.

For the binary cassette format, `encode(value, arrays)` leaves each array's numbers out of the
tree (`"data": {"$array": i}`, the array appended to `arrays`), and `loads_with_arrays`
puts them back as the lists the JSON format holds, so both formats read back to one tree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pydantic
from tinker import types
from tinker.types.topk_logprobs import TopkLogprobs

Arrays = list[np.ndarray] | None


def encode_or_repr(value: Any, arrays: Arrays = None) -> Any:
    """`encode(value)`, or for a value of no known type its repr: recorded, never rebuilt."""
    try:
        return encode(value, arrays)
    except (TypeError, ValueError):  # e.g. a RetryConfig
        return {"$repr": repr(value)}


def _tinker_classes() -> dict[str, type]:
    classes = {
        name: cls
        for name, cls in vars(types).items()
        if isinstance(cls, type)
        and (dataclasses.is_dataclass(cls) or issubclass(cls, pydantic.BaseModel))
    }
    return {**classes, "TopkLogprobs": TopkLogprobs}


TINKER_CLASSES = _tinker_classes()


JSON_LEAVES = frozenset({int, float, str, bool, type(None)})
"""The types of a JSON tree's leaves, which `decode` gives back as they are."""
_KEPT = JSON_LEAVES - {float}
"""The types `encode` gives back as they are (a float may be non-finite, which is tagged)."""


def encode(value: Any, arrays: Arrays = None) -> Any:
    """`value` as JSON-ready data that `decode` turns back into an equal value of the same type
    (with `arrays`, the arrays' numbers go there, not into the tree)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.ndarray | np.generic):
        return _encode_array(np.asarray(value), arrays)
    if isinstance(value, types.TensorData):
        return _encode_tensor_data(value, arrays)
    if isinstance(value, list):
        if all(map(_KEPT.__contains__, map(type, value))):  # e.g. a chunk's tokens, at C speed
            return list(value)
        return [encode(item, arrays) for item in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(item, arrays) for item in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, arrays) for k, v in value.items()}
        return {"$dict": [[encode(k, arrays), encode(v, arrays)] for k, v in value.items()]}
    name = type(value).__name__
    if TINKER_CLASSES.get(name) is not type(value):
        raise TypeError(f"cannot record a {type(value).__qualname__}: not a tinker.types value")
    return {"$type": name, **{k: encode(v, arrays) for k, v in _fields(value).items()}}


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


def _encode_tensor_data(tensor: types.TensorData, arrays: Arrays) -> dict[str, Any]:
    sparse = tensor.sparse_crow_indices is not None
    values = np.asarray(tensor.data) if sparse else tensor.to_numpy()
    encoded = {
        "$type": "TensorData",
        "dtype": tensor.dtype,
        "shape": tensor.shape,
        "data": _data(values.astype(_NUMPY_DTYPES[tensor.dtype], copy=False), arrays),
    }
    if sparse:
        encoded["sparse_crow_indices"] = tensor.sparse_crow_indices
        encoded["sparse_col_indices"] = tensor.sparse_col_indices
    return encoded


_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64}


def _encode_array(array: np.ndarray, arrays: Arrays) -> dict[str, Any]:
    if array.dtype.kind not in "biuf":
        raise TypeError(f"cannot record a numpy array of dtype {array.dtype}")
    return {"$ndarray": array.dtype.name, "shape": list(array.shape), "data": _data(array, arrays)}


def _data(array: np.ndarray, arrays: Arrays) -> Any:
    """The numbers of `array`: a flat list, or (binary format) its place in `arrays`."""
    if arrays is None:
        return _flat_values(array)
    arrays.append(np.ascontiguousarray(array).ravel())
    return {"$array": len(arrays) - 1}


def loads_with_arrays(
    text: str | bytes, arrays_of: Callable[[Any], Sequence[np.ndarray]], as_lists: bool = True
) -> Any:
    """The tree of JSON `text` (encoded with the arrays `arrays_of(tree)` gives) as
    `encode(value)` without them would have made it. With `as_lists=False` each array stays a
    numpy array in it: `decode` reads that tree to the same value without the lists (seconds at
    full size), but the tree no longer compares equal with an encoded one."""
    holders: list[dict[str, Any]] = []

    def hold(node: dict[str, Any]) -> dict[str, Any]:
        # Called on each JSON object as it is parsed: far fewer than a walk's list items.
        data = node.get("data")
        if isinstance(data, dict) and "$array" in data and ("$ndarray" in node or "$type" in node):
            holders.append(node)
        return node

    tree = json.loads(text, object_hook=hold)
    parsed = arrays_of(tree)
    for node in holders:
        array = parsed[node["data"]["$array"]]
        node["data"] = _flat_values(array) if as_lists else array
    return tree


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
        if all(map(JSON_LEAVES.__contains__, map(type, tree))):  # a chunk's tokens, at C speed
            return list(tree)
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
