"""Comparing encoded requests: where a replayed call first differs from its recording, what a
re-recording changed, a short display of a value for messages, and the content key that finds a
sampling call's recorded twin."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.backends.cassette import Call


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
