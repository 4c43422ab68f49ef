"""When the backend sees a request: a model's requests in `seq_id` order, sampling in batches.

Both run on the server's event loop. `SeqQueue` holds a training request until every request
before it (by the `seq_id` the SDK reserved when the user called the method) has started, so
`forward_backward` then `optim_step`, submitted back to back, run in that order however their
HTTP requests raced. `SampleBatcher` holds sampling requests until their ids leave no hole and
none has arrived for a short quiet window, then starts them all in `seq_id` order: the
backend's engine sees one batch, as it does when the same calls are made in process, and
batches to the same numbers (its float rounding depends on what shares a batch).

Their deadlines run on injected `Timers`: the server's event loop (`LoopTimers`), or a test's
fake clock that it moves by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Protocol

Start = Callable[[], None]
# Resends come within seconds of the original; this many recent ids answer them.
_REMEMBERED = 1024
_CLONE_BLOCK = 1_000_000_000


class Timer(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """A clock and callbacks at a time on it (an asyncio event loop is one)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer: ...


class LoopTimers:
    """The running event loop's clock (monotonic) and timers. The server makes its queues
    before its loop runs and uses them only on it, so the loop is looked up at each call."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_at(when, callback)


class SeqQueue:
    """Starts a model's requests in `seq_id` order, each exactly once.

    A request whose predecessors have not all arrived `gap_timeout_s` after it did is given up
    on (`on_gap`), with every request queued behind the gap, so none waits forever.
    """

    def __init__(self, first_seq_id: int, gap_timeout_s: float, timers: Timers):
        self.next_seq_id = first_seq_id
        self.gap_timeout_s = gap_timeout_s
        self._timers = timers
        self._waiting: dict[int, tuple[str, Start, Callable[[str], None]]] = {}
        self._request_ids: dict[int, str] = {}

    def request_id(self, seq_id: int) -> str | None:
        """The id already given to `seq_id`: the SDK resends a request when an answer is lost."""
        return self._request_ids.get(seq_id)

    def submit(
        self, seq_id: int, request_id: str, start: Start, on_gap: Callable[[str], None]
    ) -> None:
        """Start `start()` once every earlier `seq_id` has started; `on_gap(message)` if not."""
        if seq_id < self.next_seq_id:
            on_gap(f"seq_id {seq_id} comes after requests up to {self.next_seq_id - 1} ran")
            return
        self._request_ids[seq_id] = request_id
        self._waiting[seq_id] = (request_id, start, on_gap)
        self._start_ready()
        if seq_id in self._waiting:
            deadline = self._timers.time() + self.gap_timeout_s
            self._timers.call_at(deadline, lambda: self._give_up(seq_id))

    def _start_ready(self) -> None:
        while self.next_seq_id in self._waiting:
            _, start, _ = self._waiting.pop(self.next_seq_id)
            self._request_ids.pop(self.next_seq_id - _REMEMBERED, None)
            self.next_seq_id += 1
            start()

    def _give_up(self, seq_id: int) -> None:
        if seq_id not in self._waiting:
            return
        missing = self.next_seq_id
        for waiting_id in sorted(self._waiting):
            _, _, on_gap = self._waiting.pop(waiting_id)
            on_gap(
                f"seq_id {waiting_id} waited {self.gap_timeout_s:.0f} s for seq_id {missing},"
                " which never arrived (a request of this model was lost before reaching the"
                " server)"
            )
            self.next_seq_id = waiting_id + 1


class SampleBatcher:
    """Starts queued sampling requests together, in `seq_id` order.

    The SDK numbers a sampling client's requests n, n + 1, ... in the order they were made,
    from a multiple of 1e9 (its clone id times 1e9: 0 for the client the user created), but
    sends them concurrently, so they arrive shuffled over tens of milliseconds. A batch starts
    once the queued ids of every client run without a hole from where its last batch ended and
    no new request came for `window_s`; or, whatever is queued, `max_wait_s` after the first
    one (a request lost on the way leaves a hole that never fills).
    """

    def __init__(self, window_s: float, max_wait_s: float, timers: Timers):
        self.window_s = window_s
        self.max_wait_s = max_wait_s
        self._timers = timers
        self._queued: list[tuple[tuple[Hashable, int], int, Start]] = []
        self._next: dict[tuple[Hashable, int], int] = {}
        # Per client: how many queued ids are at or past its next one, and the largest.
        self._ahead: dict[tuple[Hashable, int], tuple[int, int]] = {}
        self._timer: Timer | None = None
        self._deadline = 0.0

    def submit(self, sampler: Hashable, seq_id: int, start: Start) -> None:
        """Queue `start()` as request `seq_id` of `sampler`."""
        now = self._timers.time()
        if not self._queued:
            self._deadline = now + self.max_wait_s
        client = (sampler, seq_id // _CLONE_BLOCK)
        self._queued.append((client, seq_id, start))
        if seq_id >= self._first(client):
            count, largest = self._ahead.get(client, (0, seq_id))
            self._ahead[client] = (count + 1, max(largest, seq_id))
        if self._timer is not None:
            self._timer.cancel()
        at = min(now + self.window_s, self._deadline) if self._whole() else self._deadline
        self._timer = self._timers.call_at(at, self._start_all)

    def _first(self, client: tuple[Hashable, int]) -> int:
        return self._next.get(client, client[1] * _CLONE_BLOCK)

    def _whole(self) -> bool:
        return all(
            largest - self._first(client) + 1 == count
            for client, (count, largest) in self._ahead.items()
        )

    def _start_all(self) -> None:
        queued, self._queued, self._timer = self._queued, [], None
        self._ahead.clear()
        for client, seq_id, start in sorted(queued, key=lambda item: item[:2]):
            self._next[client] = max(self._first(client), seq_id + 1)
            start()
