"""What a run does when the service misbehaves: a deadline on every wait, identical resubmission
of what may be resubmitted, and the line between a transient fault and a permanent one.

The SDK retries HTTP failures itself (10 times by default); what reaches the harness is what
the SDK gave up on, a future that failed on the server, or a request that never answers. A
sampling request may be sent again as it was (same prompt, same seed): its answer is what it
would have been. A training request may not: gradients accumulate until `optim_step`, and a
request whose answer was lost may have been applied. The loop redoes a step whose training
failed from the last saved state instead (`TrainingFault`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import tenacity
import tinker
from tinker.lib.retryable_exception import RetryableException


class TrainingFault(RuntimeError):
    """A training-client call failed transiently or its outcome is unknown: the client's state
    can no longer be trusted, and the step is redone from the last saved state."""


class RunFailed(RuntimeError):
    """A fault the run cannot recover from in process; the message is one line.
    `during_training`: the training client's state may hold part of a step."""

    def __init__(self, message: str, during_training: bool = False):
        super().__init__(message)
        self.during_training = during_training


# What a service answers when a request itself is wrong: the SDK's errors, and the local
# backend's (it raises these for invalid requests, as the server reports them to the SDK).
REFUSALS = (
    tinker.TinkerError,
    RetryableException,
    ValueError,
    TypeError,
    LookupError,
    NotImplementedError,
    OSError,
)


def is_transient(error: BaseException) -> bool:
    """Whether the same request may succeed later: deadlines, connections, 408/409/429/5xx,
    futures that failed on the server's side. A request the service refused as the user's
    mistake (other 4xx, category `user`) fails the same way every time."""
    if isinstance(error, TimeoutError | tinker.APIConnectionError | RetryableException):
        return True  # RetryableException: the SDK's "promise expired" (410) on a result
    if isinstance(error, tinker.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    if isinstance(error, tinker.RequestFailedError):
        return error.category != tinker.types.RequestErrorCategory.User
    return False


def describe(error: BaseException) -> str:
    """An error in one line; a 404 for something the run made says what it most likely means."""
    text = " ".join(str(error).split()) or "no message"
    hint = ""
    if isinstance(error, tinker.NotFoundError) or "Error code: 404" in text:
        hint = " (the service no longer knows this run's session: did the server restart?)"
    return f"{type(error).__name__}: {text[:200]}{hint}"


class FaultLog:
    """Counts faults by kind (since the last `take`, and in all) and says each as it happens."""

    def __init__(self, warn: Callable[[str], None]):
        self._warn = warn
        self._pending: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def record(self, kind: str, message: str) -> None:
        self._pending[kind] += 1
        self.total[kind] += 1
        self._warn(message)

    def take(self) -> dict[str, float]:
        """`faults/<kind>` counts since the last call (for the next metrics row)."""
        counts = {f"faults/{kind}": float(n) for kind, n in sorted(self._pending.items())}
        self._pending.clear()
        return counts


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float
    """How long a request may take from submission to answer before it counts as hung."""
    attempts: int
    """Sends of one request in all (the first included) before the run gives up."""
    backoff_s: float
    """Wait before the first resend; doubled each time, at most 60 s."""

    def retrying(self, on_retry: Callable[[tenacity.RetryCallState], None]) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=60.0),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=on_retry,
            reraise=True,
        )


class ResentRequest:
    """A request in flight that is sent again, unchanged, when it fails transiently or
    outlives its deadline; `result()` is its first answer. Used for sampling, which may be."""

    def __init__(
        self,
        send: Callable[[], Any],
        policy: RetryPolicy,
        faults: FaultLog,
        name: str,
        kind: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._send = send
        self._policy = policy
        self._faults = faults
        self._name = name
        self._kind = kind
        self._clock = clock
        self._future = _sent(send)
        self._sent_at = clock()

    def result(self) -> Any:
        def resend(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception()
            self._faults.record(
                self._kind,
                f"{self._name} failed ({describe(error)}); sending it again"
                f" ({state.attempt_number} of {self._policy.attempts - 1} resends)",
            )

        try:
            for attempt in self._policy.retrying(resend):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._future, self._sent_at = _sent(self._send), self._clock()
                    left_s = self._policy.timeout_s - (self._clock() - self._sent_at)
                    try:
                        return self._future.result(timeout=max(left_s, 0.0))
                    except TimeoutError:
                        raise TimeoutError(
                            f"no answer within --request_timeout_s={self._policy.timeout_s:g}"
                        ) from None
        except REFUSALS as error:
            tries = "" if not is_transient(error) else f" {self._policy.attempts} times"
            raise RunFailed(f"{self._name} failed{tries}: {describe(error)}") from error
        raise AssertionError("unreachable: tenacity reraises the last error")


def _sent(send: Callable[[], Any]) -> Any:
    """`send()`'s future; one that failed at once if `send` raised (a client may refuse a
    request before it has a future to fail)."""
    try:
        return send()
    except Exception as error:
        failed: concurrent.futures.Future = concurrent.futures.Future()
        failed.set_exception(error)
        return failed


@dataclasses.dataclass(frozen=True)
class Waits:
    """How the loop waits on the service: every wait has a deadline; what may be sent again
    is, and what may not ends the step with a `TrainingFault`; every fault is counted."""

    policy: RetryPolicy
    faults: FaultLog

    def resendable(self, send: Callable[[], Any], name: str, kind: str) -> ResentRequest:
        """`send()`'s request, in flight, sent again as it was when it fails (`kind` names
        the fault counter)."""
        return ResentRequest(send, self.policy, self.faults, name, kind)

    def training(self, future: Any, name: str) -> Any:
        """A training-client call's answer within the deadline; a transient failure, or no
        answer in time, is a `TrainingFault` (the call may or may not have been applied)."""
        try:
            return future.result(timeout=self.policy.timeout_s)
        except TimeoutError:
            raise TrainingFault(
                f"{name} did not answer within --request_timeout_s={self.policy.timeout_s:g}"
            ) from None
        except REFUSALS as error:
            if is_transient(error):
                raise TrainingFault(f"{name} failed ({describe(error)})") from error
            raise RunFailed(f"{name} failed: {describe(error)}", during_training=True) from error
