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
