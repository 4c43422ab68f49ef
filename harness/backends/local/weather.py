"""A weather profile applied in process: when the local backend's futures settle, and which fail.

Each call's future is held until the modelled time (`harness.weather`: the model's clock
cycles, sampling slots, save and load times) and then settles with the backend's result, or
with the error a fault names: the error the SDK raises to its caller once its own retries are
spent, so the harness meets what it would meet on the cloud. A fault `before` skips the call;
`after` makes it (gradients accumulate, the optimizer steps, the checkpoint is written) and
then fails its answer.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx
import tinker
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture
from tinker.lib.retryable_exception import RetryableException

from harness.weather import (
    SAVES,
    Call,
    FaultSchedule,
    Fired,
    SampleSlots,
    TrainingTimeline,
    Weather,
    announce,
    describe,
    sampling_service_s,
)

from .engine import CLOSED_MESSAGE, Closed
from .futures import settle
from .storage import CheckpointStore

T = TypeVar("T")
# The SDK's sampling retries HTTP errors until its no-progress detector (RetryConfig's
# progress_timeout, 2 hours by default) gives up with this error.
SDK_STUCK_S = 120 * 60


class Delayer:
    """Settles futures at given times of `now`, from one thread; `close` fails what waits."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._heap: list[tuple[float, int, Future, Callable[[], None] | None]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def at(self, due: float, future: Future, action: Callable[[], None] | None) -> None:
        """Run `action` (which settles `future`) at `due`; None (or due = inf): never."""
        with self._wake:
            if self._closed:
                settle(future, error=Closed(CLOSED_MESSAGE))
                return
            heapq.heappush(self._heap, (due, next(self._order), future, action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="local-weather")
                self._thread.daemon = True
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            waiting, self._heap = self._heap, []
            self._wake.notify()
            thread = self._thread
        for _, _, future, _ in waiting:
            settle(future, error=Closed(CLOSED_MESSAGE))
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._closed:
                    due = self._heap[0][0] if self._heap else math.inf
                    if due <= self._now():
                        _, _, _, action = heapq.heappop(self._heap)
                        break
                    self._wake.wait(None if due == math.inf else due - self._now())
                else:
                    return
            if action is not None:
                action()


def _request(call: Call) -> httpx.Request:
    return httpx.Request("POST", f"http://local-backend/api/v1/{call}")


def sdk_error(fired: Fired, source: str) -> BaseException:
    """The error the SDK hands its caller for this fault, once its retries are spent."""
    fault, call = fired.fault, fired.call
    what = describe(fired, source)
    if fault.error in ("status", "disconnect") and call == "sample":
        return tinker.APIConnectionError(
            request=_request(call),
            message=f"No progress made in {SDK_STUCK_S}s. Requests appear to be stuck. ({what})",
        )
    if fault.error == "status":
        response = httpx.Response(fault.status, request=_request(call))
        message = f"Error code: {fault.status} ({what})"
        if fault.status >= 500:
            return tinker.InternalServerError(message, response=response, body=None)
        return tinker.APIStatusError(message, response=response, body=None)
    if fault.error == "disconnect":
        return tinker.APIConnectionError(
            request=_request(call), message=f"Connection error. ({what})"
        )
    if fault.error == "failed":
        request_id = f"local-{call}-{fired.n}"
        return tinker.RequestFailedError(
            f"Request failed: {what} for self.request_id={request_id!r}",
            request_id=request_id,
            category=types.RequestErrorCategory.Server,
        )
    if fault.error == "expired":
        return RetryableException(
            f"Promise expired/broken for request local-{call}-{fired.n} ({what})"
        )
    raise AssertionError(f"no in-process error for {fault.error}")


def _copy(source: Future, target: Future) -> None:
    error = source.exception()
    settle(target, None if error is not None else source.result(), error)


class LocalWeather:
    """`weather` for one `LocalServiceClient`; "die" faults are the server's and skipped here."""

    def __init__(
        self, weather: Weather, store: CheckpointStore, now: Callable[[], float] = time.monotonic
    ):
        self.weather = weather
        self.schedule = FaultSchedule([f for f in weather.faults if f.error != "die"], weather.seed)
        self._store = store
        self._now = now
        self._delayer = Delayer(now)
        self._slots = SampleSlots(weather.latency.max_concurrent_samples)
        self._waiting: dict[object, Callable[[float], None]] = {}
        self._slots_lock = threading.Lock()
        self._timeline_lock = threading.Lock()

    def close(self) -> None:
        self._delayer.close()

    def timeline(self) -> TrainingTimeline:
        latency = self.weather.latency
        return TrainingTimeline(
            self.weather.seconds(latency.cycle_s),
            self.weather.seconds(latency.save_s),
            latency.cycle_tokens,
        )

    # -- training and loading -------------------------------------------------------------

    def _next(self, call: Call) -> Fired | None:
        fired = self.schedule.next(call)
        if fired is not None:
            announce(fired, self.weather.source)
        return fired

    def training(
        self,
        call: Call,
        timeline: TrainingTimeline,
        submit: Callable[[], APIFuture[T]],
        tokens: int = 0,
    ) -> APIFuture[T]:
        """`submit()` (a call on a training client's queue of `tokens` tokens), answered when
        `timeline` says."""
        fired = self._next(call)
        with self._timeline_lock:
            finish = timeline.queue(self._now(), save=call in SAVES, tokens=tokens)
        return self._answer(fired, submit, finish)

    def service(
        self, call: Call | None, submit: Callable[[], APIFuture[T]], load: bool
    ) -> APIFuture[T]:
        """`submit()` (creating a client), after the load time if it loads a checkpoint;
        `call` None: no fault can strike it."""
        fired = self._next(call) if call is not None else None
        seconds = self.weather.seconds(self.weather.latency.load_s) if load else 0.0
        return self._answer(fired, submit, self._now() + seconds)

    def _answer(self, fired: Fired | None, submit: Callable[[], APIFuture[T]], finish: float):
        answer: Future = Future()
        if fired is not None and fired.fault.when == "before":
            self._fail(fired, answer, finish)
            return AwaitableConcurrentFuture(answer)

        def applied(done: Future) -> None:
            due = max(finish, self._now())
            if fired is None or fired.fault.error == "checkpoint_expired":
                if fired is not None and done.exception() is None:
                    self._expire(done.result(), fired)
                self._delayer.at(due, answer, lambda: _copy(done, answer))
            else:
                self._fail(fired, answer, due)

        submit().future().add_done_callback(applied)
        return AwaitableConcurrentFuture(answer)

    def _fail(self, fired: Fired, answer: Future, due: float) -> None:
        if fired.fault.error == "hang":
            self._delayer.at(math.inf, answer, None)
        else:
            error = sdk_error(fired, self.weather.source)
            self._delayer.at(due, answer, lambda: settle(answer, error=error))

    def _expire(self, result: Any, fired: Fired) -> None:
        """The checkpoint `result` names expires `expires_after_s` (scaled) after it was saved."""
        path = getattr(result, "path", None)
        if path is not None:
            seconds = self.weather.seconds(fired.fault.expires_after_s)
            self._store.set_expires_at(path, self._store.now() + seconds)

    # -- sampling -------------------------------------------------------------------------

    def sample(self, submit: Callable[[], APIFuture[types.SampleResponse]]):
        """`submit()` (a sampling request to the engine), answered when its slot and its
        tokens say. An expired promise makes the SDK send the request again: it runs twice."""
        fired = self._next("sample")
        answer: Future = Future()
        if fired is not None and fired.fault.when == "before" and fired.fault.error != "expired":
            ttft = self.weather.seconds(self.weather.latency.ttft_s)
            self._fail(fired, answer, self._now() + ttft)
        else:
            self._generate(submit, answer, fired, runs=2 if _expired(fired) else 1)
        return AwaitableConcurrentFuture(answer)

    def _generate(self, submit, answer: Future, fired: Fired | None, runs: int) -> None:
        key = object()

        def finished(done: Future, due: float) -> None:
            if runs > 1:
                self._delayer.at(
                    due, answer, lambda: self._generate(submit, answer, None, runs - 1)
                )
            elif fired is not None:  # a fault after generating (an expired one ran again)
                self._fail(fired, answer, due)
            else:
                self._delayer.at(due, answer, lambda: _copy(done, answer))

        def generated(done: Future) -> None:
            tokens = 0
            if done.exception() is None:
                tokens = max((len(s.tokens) for s in done.result().sequences), default=0)
            service_s = self.weather.seconds(sampling_service_s(self.weather.latency, tokens))
            with self._slots_lock:
                self._waiting[key] = lambda due: finished(done, max(due, self._now()))
                ready = [
                    (self._waiting.pop(k), due) for k, due in self._slots.served(key, service_s)
                ]
            for then, due in ready:
                then(due)

        with self._slots_lock:
            self._slots.arrive(key, self._now())
        submit().future().add_done_callback(generated)


def _expired(fired: Fired | None) -> bool:
    return fired is not None and fired.fault.error == "expired"


class Calm:
    """No weather: every call answers as the backend does."""

    def close(self) -> None:
        pass

    def timeline(self) -> None:
        return None

    def training(
        self, call: Call, timeline: Any, submit: Callable[[], APIFuture[T]], tokens: int = 0
    ) -> APIFuture[T]:
        return submit()

    def service(
        self, call: Call | None, submit: Callable[[], APIFuture[T]], load: bool
    ) -> APIFuture[T]:
        return submit()

    def sample(self, submit: Callable[[], APIFuture[T]]) -> APIFuture[T]:
        return submit()


def local_weather(weather: Weather | None, store: CheckpointStore) -> LocalWeather | Calm:
    return Calm() if weather is None else LocalWeather(weather, store)
