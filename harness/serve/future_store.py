"""Request ids and their outcomes, for `retrieve_future`'s long poll.

Every future-returning endpoint answers `{request_id}` at once and settles the request later
with an `Outcome`: the wire bytes of its result, or a failure with a category. A poll waits
up to `hold_s` for the outcome and otherwise tells the SDK to try again, so no HTTP request is
held forever. The SDK polls every request from the moment it is submitted, so an outcome is
kept only `keep_s` after it settled (long enough for a poll whose answer was lost to ask
again), then forgotten.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Literal

Category = Literal["user", "server"]


@dataclass(frozen=True)
class Payload:
    body: bytes
    media_type: str


@dataclass(frozen=True)
class Failure:
    message: str
    category: Category


Outcome = Payload | Failure


class FutureStore:
    """Pending and settled requests by id. Used from the server's event loop only."""

    def __init__(self, hold_s: float, keep_s: float, clock: Callable[[], float] = time.monotonic):
        self.hold_s = hold_s
        self.keep_s = keep_s
        self._clock = clock
        self._futures: dict[str, Future[Outcome]] = {}
        self._settled: collections.deque[tuple[float, str]] = collections.deque()
        self._closed: Failure | None = None
        self._closing = asyncio.Event()

    def open(self) -> str:
        """A new request id, pending until `settle`d (or failed at once if the store closed)."""
        self._forget_old()
        request_id = f"req-{uuid.uuid4().hex}"
        self._futures[request_id] = Future()
        if self._closed is not None:
            self.settle(request_id, self._closed)
        return request_id

    def settle(self, request_id: str, outcome: Outcome) -> None:
        future = self._futures.get(request_id)
        if future is not None:
            try:
                future.set_result(outcome)
            except InvalidStateError:
                return  # settled already: the first outcome stands
            self._settled.append((self._clock(), request_id))

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._futures

    async def retrieve(self, request_id: str) -> Outcome | None:
        """The outcome, waiting up to `hold_s` for it; None if it is still pending."""
        future = self._futures[request_id]
        if not future.done():
            # asyncio.wait, unlike wait_for, leaves the future alone when the hold runs out.
            await asyncio.wait([asyncio.wrap_future(future)], timeout=self.hold_s)
        return future.result() if future.done() else None

    async def hold(self) -> Failure | None:
        """Wait `hold_s` as a poll of a pending request would; the failure of a store that
        closed meanwhile, or None."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self.hold_s)
        return self._closed

    async def finished(self, request_id: str) -> None:
        """Wait until `request_id` has settled."""
        await asyncio.wrap_future(self._futures[request_id])

    def close(self, failure: Failure) -> None:
        """Fail every pending request with `failure`, and every request opened from now on."""
        self._closed = failure
        self._closing.set()
        for request_id in list(self._futures):
            self.settle(request_id, failure)

    def _forget_old(self) -> None:
        horizon = self._clock() - self.keep_s
        while self._settled and self._settled[0][0] < horizon:
            _, request_id = self._settled.popleft()
            self._futures.pop(request_id, None)
