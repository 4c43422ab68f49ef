"""A service client that makes chosen calls fail as the cloud's do, around any backend.

`Faulty(service, {("forward_backward", 2): "after"})` lets the second forward_backward of the
run reach the backend (its gradients accumulate) and then fails its future; "before" fails it
without sending; "hang" never answers. Failures are the SDK's own: a future failed on the
server's side (`RequestFailedError`, category server), or `category="user"` for a refusal.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future
from typing import Any

import tinker
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

Plan = dict[tuple[str, int], str]
FAULT_RUN_STEPS = 4
# The run the fault tests disturb: 4 steps, a rolling save every 2, the final checkpoint at 4;
# resends at once (no backoff); the backend and the deadline are each test's.
FAULT_RUN_FLAGS = [
    f"--n_grpo_steps={FAULT_RUN_STEPS}",
    "--rollout_batch_size=4",
    "--group_size=2",
    "--save_every=4",
    "--rolling_save_every=2",
    "--eval_every=2",
    "--eval_n=2",
    "--sampling_max_tokens=12",
    "--learning_rate=1e-3",
    "--retry_backoff_s=0",
]


def failed(category: str = "server") -> AwaitableConcurrentFuture:
    future: Future = Future()
    error = tinker.RequestFailedError(
        "injected fault", "req-injected", tinker.types.RequestErrorCategory(category)
    )
    future.set_exception(error)
    return AwaitableConcurrentFuture(future)


def mapped(future: Any, fn: Any) -> AwaitableConcurrentFuture:
    """A future of `fn(result)`, failing as `future` fails."""
    out: Future = Future()

    def done(inner: Future) -> None:
        if inner.exception() is not None:
            out.set_exception(inner.exception())
        else:
            out.set_result(fn(inner.result()))

    future.future().add_done_callback(done)
    return AwaitableConcurrentFuture(out)


class Faults:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.calls: collections.Counter[str] = collections.Counter()
        self.injected: list[tuple[str, int, str]] = []

    def call(self, method: str, send) -> Any:
        self.calls[method] += 1
        fault = self.plan.get((method, self.calls[method]))
        if fault is None:
            return send()
        self.injected.append((method, self.calls[method], fault))
        if fault == "before":
            return failed()
        if fault == "refused":
            return failed("user")
        if fault == "hang":
            return AwaitableConcurrentFuture(Future())
        assert fault == "after", fault
        send().result()  # applied, and then the answer is lost
        return failed()


class _Wrapped:
    def __init__(self, inner: Any, faults: Faults):
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FaultySampler(_Wrapped):
    def sample(self, *args, **kwargs):
        return self._faults.call("sample", lambda: self._inner.sample(*args, **kwargs))


class FaultyTraining(_Wrapped):
    def _call(self, method: str, *args, **kwargs):
        return self._faults.call(method, lambda: getattr(self._inner, method)(*args, **kwargs))

    def forward_backward(self, *args, **kwargs):
        return self._call("forward_backward", *args, **kwargs)

    def optim_step(self, *args, **kwargs):
        return self._call("optim_step", *args, **kwargs)

    def save_state(self, *args, **kwargs):
        return self._call("save_state", *args, **kwargs)

    def save_weights_and_get_sampling_client(self, *args, **kwargs):
        future = self._call("save_weights_and_get_sampling_client", *args, **kwargs)
        return mapped(future, lambda sampler: FaultySampler(sampler, self._faults))


class Faulty(_Wrapped):
    """A service whose training and sampling clients fail where `plan` says."""

    def __init__(self, inner: Any, plan: Plan):
        super().__init__(inner, Faults(plan))

    @property
    def faults(self) -> Faults:
        return self._faults

    def _training(self, future) -> AwaitableConcurrentFuture:
        return mapped(future, lambda client: FaultyTraining(client, self._faults))

    def create_lora_training_client(self, *args, **kwargs):
        return self._training(self._inner.create_lora_training_client(*args, **kwargs))

    def create_training_client_from_state_with_optimizer(self, *args, **kwargs):
        return self._training(
            self._inner.create_training_client_from_state_with_optimizer(*args, **kwargs)
        )
