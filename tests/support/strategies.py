"""Hypothesis strategies and profiles the property and state-machine tests share.

`conftest.py` loads the "ci" profile when CI=true: the same examples on every run
(derandomized, no example database), so a CI failure reproduces; else "dev", which draws
afresh each run and replays the failures it kept. Neither has a deadline: on a shared
2-core machine the time an example takes says nothing about the code.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import settings
from hypothesis import strategies as st

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)


def profile_for(environ: Mapping[str, str]) -> str:
    return "ci" if environ.get("CI") == "true" else "dev"


def waits(timeout_s: float) -> st.SearchStrategy[float]:
    """Seconds to move a fake clock on: none, exactly up to a timeout, or anything below two."""
    return st.sampled_from([0.0, timeout_s / 2, timeout_s]) | st.floats(0.0, 2 * timeout_s)


# -- encoded values (what a cassette stores) -------------------------------------------------

NUMBERS = st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6, allow_nan=False)
LEAVES = st.none() | st.booleans() | NUMBERS | st.text(max_size=3)
KEYS = st.sampled_from(["a", "b", "tokens"])
TYPE_TAGS = st.none() | st.sampled_from(["Datum", "ModelInput"])


def _tagged(fields: dict, tag: str | None) -> dict:
    return fields if tag is None else {"$type": tag, **fields}


def encoded_values() -> st.SearchStrategy:
    """Trees of JSON values as `harness.backends.cassette.encode` makes them: objects may
    carry a `$type` tag."""
    return st.recursive(
        LEAVES,
        lambda children: (
            st.lists(children, max_size=3)
            | st.builds(_tagged, st.dictionaries(KEYS, children, max_size=3), TYPE_TAGS)
        ),
        max_leaves=12,
    )


@st.composite
def nudged(draw, tree):
    """`tree` with some numbers moved: by a relative 1e-9 (float noise), 1e-7 (still within a
    replay's tolerance), 1e-5 or 1e-3 (outside it), or to another number."""

    def walk(node):
        if isinstance(node, bool) or node is None or isinstance(node, str):
            return node
        if isinstance(node, int | float):
            how = draw(st.sampled_from(["same", "1e-9", "1e-7", "1e-5", "1e-3", "other"]))
            if how == "same":
                return node
            if how == "other":
                return draw(NUMBERS)
            return node * (1 + float(how)) if node else float(how)
        if isinstance(node, list):
            return [walk(item) for item in node]
        return {key: walk(value) for key, value in node.items()}

    return walk(tree)


# -- tinker:// paths ----------------------------------------------------------------------------

SEGMENTS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)
RUN_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,12}", fullmatch=True)
# A good segment with a separator, a dot, a line end or a non-ASCII letter after it; or any text.
PATH_TEXT = st.builds(str.__add__, SEGMENTS, st.sampled_from([".", "/", ":", "\n", "\t", " ", "é"]))
PATH_TEXT |= st.text(max_size=6)
