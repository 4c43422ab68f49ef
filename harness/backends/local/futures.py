"""Futures that behave like the SDK's: `.result(timeout)`, `await`, `result_async()`.

They are the SDK's own `AwaitableConcurrentFuture` around a `concurrent.futures.Future`, so
`isinstance(f, tinker.APIFuture)` holds and errors surface from `.result()` as in the cloud.
"""

from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import TypeVar

from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture

T = TypeVar("T")


def run_now(fn: Callable[[], T]) -> APIFuture[T]:
    """Run `fn` here and now; its result or exception is delivered by `.result()`."""
    future: Future[T] = Future()
    try:
        future.set_result(fn())
    except Exception as error:
        future.set_exception(error)
    return AwaitableConcurrentFuture(future)


def settle(future: Future[T], result: T | None = None, error: BaseException | None = None) -> None:
    """Complete `future` unless the caller already cancelled it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class OrderedWorker:
    """One thread that runs submitted calls in submission order (the server's seq_id order)."""

    def __init__(self, name: str):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[[], T]) -> APIFuture[T]:
        return AwaitableConcurrentFuture(self._executor.submit(fn))

    def shutdown(self, wait: bool = False) -> None:
        """Cancel what has not started; with `wait`, also wait for the call running now."""
        self._executor.shutdown(wait=wait, cancel_futures=True)
