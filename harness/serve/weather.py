"""A weather profile's faults at the HTTP level, so that the real SDK meets them and retries
what it retries by itself (latency is the backend's: the server's `LocalServiceClient` gets
the profile without its faults).

A fault strikes a request when its POST arrives (the n-th arrival of its kind, resends
included). `before`: the request is not applied; a `status` answers that HTTP status, a
`disconnect` closes the connection mid-answer, `die` ends the process; `failed`, `hang` and
`expired` take the request's turn without running it. `after`: the request runs, and once it
has finished the POST answers the status, drops the connection or dies, or its result is
withheld: `failed` fails it with category `server`, `hang` answers `try_again` to every poll,
`expired` answers 410 to them; `checkpoint_expired` lets the checkpoint it saved expire.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable

from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harness.weather import FaultSchedule, Fired, Weather, announce, describe

from .future_store import Failure, Outcome
from .state import JSON, HttpError

# The exit status of a server that died as its weather said (EX_TEMPFAIL: rerun it).
DIED_EXIT_CODE = 75
_HTTP_EFFECTS = ("status", "disconnect", "die")
_WITHHELD = ("failed", "hang", "expired")


class ConnectionDropped(Exception):
    """A fault that drops the connection of the request it strikes."""


# The header by which an answer asks `dropping_connections` to break it off.
_DROP = b"x-harness-weather-drop"


def dropped_answer() -> Response:
    return Response(b"", media_type=JSON, headers={_DROP.decode(): "1"})


def dropping_connections(app: ASGIApp) -> ASGIApp:
    """`app`, where an answer marked by `dropped_answer` breaks off after its headers: the
    client reads a truncated response, as when a connection drops. It wraps everything
    else, so that uvicorn sees the answer started and then an error, and closes the
    connection (rather than answering 500, as for an error before an answer starts)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        dropped = False

        async def breaking_off(message: Message) -> None:
            nonlocal dropped
            if message["type"] == "http.response.start" and any(
                name == _DROP for name, _ in message.get("headers", [])
            ):
                dropped = True
                headers = [(b"content-type", JSON.encode()), (b"content-length", b"1024")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            elif not dropped:
                await send(message)

        await app(scope, receive, breaking_off)
        if dropped:
            raise ConnectionDropped("the weather dropped this connection")

    return wrapped


class _QuietDrops(logging.Filter):
    """uvicorn logs every exception of an answer as an error; a planned drop is none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


QUIET_DROPS = _QuietDrops()


def die() -> None:
    """End the server process at once, as a crash would: no answer, no cleanup."""
    print("weather: the server process dies here", file=sys.stderr, flush=True)
    os._exit(DIED_EXIT_CODE)


class ServerWeather:
    """The fault schedule of one server and the faults it dealt to requests in flight."""

    def __init__(self, weather: Weather, on_die: Callable[[], None] = die):
        self.weather = weather
        self.schedule = FaultSchedule(weather.faults, weather.seed)
        self.on_die = on_die
        self._after: dict[str, Fired] = {}
        self._withheld: dict[str, Fired] = {}

    def arrive(self, call) -> Fired | None:
        """The fault striking this request, if any; one `before` with an HTTP effect
        strikes now (raising the refusal, or dying)."""
        fired = self.schedule.next(call)
        if fired is not None:
            announce(fired, self.weather.source)
        if fired is not None and fired.fault.when == "before":
            self._strike(fired)
        return fired

    def follow(self, request_id: str, fired: Fired | None) -> None:
        """Remember what `fired` does to `request_id` once it has finished."""
        if fired is None:
            return
        if fired.fault.error in _HTTP_EFFECTS:
            self._after[request_id] = fired
        elif fired.fault.error in _WITHHELD:
            self._withheld[request_id] = fired

    async def answered(self, request_id: str, finished: Callable[[], Awaitable[None]]) -> None:
        """Before the POST of `request_id` answers: an `after` fault with an HTTP effect
        waits until the request has finished (`finished()`), then strikes."""
        fired = self._after.pop(request_id, None)
        if fired is not None:
            await finished()
            self._strike(fired)

    async def retrieved(
        self,
        request_id: str,
        outcome: Outcome | None,
        hold: Callable[[], Awaitable[Failure | None]],
    ) -> Outcome | None:
        """What a poll of `request_id` answers, given its real `outcome` (None: pending);
        `hold()` holds a poll as a pending one is held (returning the server's failure if it
        stopped meanwhile)."""
        fired = self._withheld.get(request_id)
        if fired is None:
            return outcome
        if fired.fault.error == "hang":
            # A poll that would answer at once is held as a pending one; a stopping server
            # fails it as it fails everything in flight.
            return await hold() if outcome is not None else None
        if outcome is None:
            return None
        if fired.fault.error == "expired":
            raise HttpError(410, f"promise for {request_id} expired ({self._what(fired)})")
        return Failure(f"internal error ({self._what(fired)})", "server")

    def _strike(self, fired: Fired) -> None:
        fault = fired.fault
        if fault.error == "die":
            self.on_die()
        elif fault.error == "status":
            raise HttpError(fault.status, self._what(fired))
        elif fault.error == "disconnect":
            raise ConnectionDropped(self._what(fired))

    def _what(self, fired: Fired) -> str:
        return describe(fired, self.weather.source)
