"""Wall-clock seconds per phase of a step."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence


class Timer:
    """Wall-clock seconds per phase; a phase that did not run reports 0."""

    def __init__(self, keys: Sequence[str], clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._start = clock()
        self._seconds = dict.fromkeys(keys, 0.0)

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self._seconds[key] += self._clock() - start

    def totals(self) -> dict[str, float]:
        return {**self._seconds, "time/total": self._clock() - self._start}
