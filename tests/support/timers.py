"""A fake clock for code that takes a clock or `harness.serve.ordering.Timers`: time moves only
when a test moves it, and the callbacks due by then run, in time order, each at its own time."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class FakeTimer:
    when: float
    order: int  # callbacks due at one time run in the order they were set, as asyncio runs them
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """`time()` and `call_at` as an event loop has them; calling it gives the time too."""

    def __init__(self, now: float = 0.0):
        self.now = now
        self.fired = 0  # callbacks run so far: one number per timer that went off
        self._due: list[FakeTimer] = []
        self._made = itertools.count()

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, next(self._made), callback)
        heapq.heappush(self._due, timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock on by `seconds`, running every callback due by then (a callback set
        for a moment already past runs at once, as asyncio runs it on its next turn)."""
        end = self.now + seconds
        while self._due and self._due[0].when <= end:
            timer = heapq.heappop(self._due)
            if timer.cancelled:
                continue
            self.now = max(self.now, timer.when)
            self.fired += 1
            timer.callback()
        self.now = end
