"""`ReplayServiceClient`: a service whose clients answer from a cassette, as the recorded run's did.

Every request is checked against the recorded one. Calls on the service and training clients
must come in recorded order; sampling calls between two of them (one step's concurrent requests)
may come in any order and are matched by content. The first request that differs raises
`ReplayMismatch`, naming the call, the field and both values. No model is loaded: responses come
from the cassette, and the tokenizer from its own files.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture

from harness.backends.cassette import (
    FUTURE_METHODS,
    ORDERED_KINDS,
    SYNC_METHODS,
    Call,
    Cassette,
    CassetteError,
    canonical_request,
    client_kind,
    read_cassette,
    read_header,
)
from harness.backends.cassette_codec import decode
from harness.backends.cassette_compare import first_difference, match_key
from harness.config import ConfigError
from harness.plugins import import_module

TOKENIZER_ENV = "HARNESS_REPLAY_TOKENIZER"
# Reward functions a cassette may name: importing one runs no code from elsewhere.
REWARD_MODULES = ("harness.", "tests.")


class ReplayError(RuntimeError):
    """A cassette that cannot be replayed here."""


class ReplayMismatch(ReplayError):
    """The replayed run asked for something the recorded run did not."""


class RecordedError(RuntimeError):
    """An error the recorded backend raised, of a type this process cannot rebuild."""


class Replay:
    """The cassette's calls, and which of them the replay has answered."""

    def __init__(self, cassette: Cassette, realtime: bool, tokenizer: str | None):
        self.cassette = cassette
        self.realtime = realtime
        self._override = tokenizer
        self._tokenizers: dict[tuple[tuple[str, str], ...], Any] = {}
        self._ordered = [call for call in cassette.calls if call.ordered]
        self._position = 0
        self._pending = {call.index: call for call in cassette.calls if not call.ordered}
        self._by_key: dict[tuple[str, str, str], list[Call]] = defaultdict(list)
        for call in self._pending.values():
            self._by_key[call.client, call.method, match_key(call.request)].append(call)
        self._lock = threading.Lock()

    def unreplayed(self) -> list[Call]:
        """Recorded calls no request has matched yet."""
        with self._lock:
            rest = self._ordered[self._position :] + list(self._pending.values())
        return sorted(rest, key=lambda call: call.index)

    # -- answering ----------------------------------------------------------------------------

    def future(self, client_id: str, method: str, args: tuple, kwargs: dict) -> APIFuture:
        call = self._match(client_id, method, args, kwargs)
        if call.error is not None and call.error["at"] == "submit":
            raise rebuilt_error(call.error)
        future: Future = Future()
        deliver = functools.partial(self._settle, future, call)
        if self.realtime:
            timer = threading.Timer(call.latency_s, deliver)
            timer.daemon = True  # a replay abandoned mid-run does not keep the process alive
            timer.start()
        else:
            deliver()
        return AwaitableConcurrentFuture(future)

    def sync(self, client_id: str, method: str, args: tuple, kwargs: dict) -> Any:
        call = self._match(client_id, method, args, kwargs)
        if self.realtime:
            time.sleep(call.latency_s)
        if call.error is not None:
            raise rebuilt_error(call.error)
        return self._value(call)

    def _settle(self, future: Future, call: Call) -> None:
        try:
            if call.error is not None:
                future.set_exception(rebuilt_error(call.error))
            else:
                future.set_result(self._value(call))
        except Exception as error:  # a response this process cannot rebuild
            future.set_exception(error)

    def _value(self, call: Call) -> Any:
        response = call.response
        if isinstance(response, dict) and "$client" in response:
            return ReplayClient(self, response["$client"])
        if isinstance(response, dict) and "$tokenizer" in response:
            return self._tokenizer(response["$tokenizer"])
        return decode(response)

    def _tokenizer(self, source: dict[str, str]) -> Any:
        key = tuple(sorted(source.items()))
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = load_tokenizer(source, self.cassette, self._override)
            return self._tokenizers[key]

    # -- matching -----------------------------------------------------------------------------

    def _match(self, client_id: str, method: str, args: tuple, kwargs: dict) -> Call:
        request = canonical_request(client_kind(client_id), method, args, kwargs)
        with self._lock:
            if client_kind(client_id) in ORDERED_KINDS:
                return self._next_ordered(client_id, method, request)
            return self._by_content(client_id, method, request)

    def _window(self) -> tuple[int, float]:
        """Indices of the ordered calls around the current step: its sampling calls lie between."""
        low = self._ordered[self._position - 1].index if self._position > 0 else -1
        high = self._ordered[self._position].index if self._position < len(self._ordered) else None
        return low, math.inf if high is None else high

    def _next_ordered(self, client_id: str, method: str, request: dict[str, Any]) -> Call:
        called = f"{client_id}.{method}"
        if self._position == len(self._ordered):
            last = self.cassette.calls[-1].index if self.cassette.calls else -1
            raise self.mismatch(
                f"the replay calls {called}, but the recording ends at call {last}: the recorded"
                " run made no more calls on its service or training clients"
            )
        expected = self._ordered[self._position]
        skipped = sorted(i for i in self._pending if i < expected.index)
        if skipped:
            names = ", ".join(f"{i} ({self._pending[i].name})" for i in skipped[:3])
            raise self.mismatch(
                f"the replay calls {called} (call {expected.index} in the recording), but the"
                f" recorded run first made {len(skipped)} more call(s) that this replay did not:"
                f" call {names}"
            )
        if (expected.client, expected.method) != (client_id, method):
            raise self.mismatch(
                f"call {expected.index}: the recording has {expected.name} here, the replay"
                f" calls {called}{_resume_hint(expected, method)}"
            )
        difference = first_difference(expected.request, request)
        if difference is not None:
            raise self.mismatch(
                f"call {expected.index} ({expected.name}) differs from the recording:\n"
                f"  {difference.describe()}"
            )
        self._position += 1
        return expected

    def _by_content(self, client_id: str, method: str, request: dict[str, Any]) -> Call:
        low, high = self._window()

        def in_step(call: Call) -> bool:
            return call.index in self._pending and low < call.index < high

        for call in self._by_key.get((client_id, method, match_key(request)), []):
            if in_step(call) and first_difference(call.request, request) is None:
                return self._consume(call)
        candidates = [
            call
            for call in self._pending.values()
            if (call.client, call.method) == (client_id, method) and in_step(call)
        ]
        for call in candidates:  # equal within float tolerance, yet keyed apart by rounding
            if first_difference(call.request, request) is None:
                return self._consume(call)
        step = f"between call {low} and call {high}" if high < math.inf else f"after call {low}"
        if not candidates:
            raise self.mismatch(
                f"the replay calls {client_id}.{method}, but the recorded run made no more such"
                f" calls {step}"
            )
        nearest = max(candidates, key=lambda call: (_agreement(call.request, request), -call.index))
        difference = first_difference(nearest.request, request)
        assert difference is not None
        raise self.mismatch(
            f"the replay's {client_id}.{method} request matches no recorded one {step}"
            f" ({len(candidates)} left to match by content); the nearest is call"
            f" {nearest.index} ({nearest.name}):\n  {difference.describe()}"
        )

    def _consume(self, call: Call) -> Call:
        del self._pending[call.index]
        return call

    def mismatch(self, message: str) -> ReplayMismatch:
        return ReplayMismatch(f"{message}\n(replaying {self.cassette.path})")


def _agreement(recorded: Any, replayed: Any) -> int:
    """How many keys and values, in order, two requests share before they part."""
    pairs = zip(_leaves(recorded), _leaves(replayed), strict=False)
    return sum(1 for _ in itertools.takewhile(lambda pair: pair[0] == pair[1], pairs))


def _leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key
            yield from _leaves(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _leaves(item)
    else:
        yield tree


def _resume_hint(expected: Call, method: str) -> str:
    if expected.method == "create_training_client_from_state_with_optimizer":
        return (
            "; the recording resumed from a checkpoint: replay it in a copy of the recorded"
            " run's log_path, whose checkpoint index it resumed from"
        )
    if method == "create_training_client_from_state_with_optimizer":
        return "; the replay resumes from a checkpoint in --log_path: replay into a fresh one"
    return ""


def rebuilt_error(error: dict[str, str]) -> Exception:
    """The recorded error as an exception of its type when that is a builtin one."""
    cls = getattr(builtins, error["type"], None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(error["message"])
    return RecordedError(f"{error['type']}: {error['message']}")


def load_tokenizer(source: dict[str, str], cassette: Cassette, override: str | None) -> Any:
    """The recorded tokenizer from its files alone: never the model's weights, never the hub."""
    from transformers import AutoTokenizer

    if override:
        location = override
    elif "dir" in source:
        location = str(cassette.path.parent / source["dir"])
    else:
        location = source.get("name") or str(cassette.header.get("model"))
    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ReplayError(
            f"cannot load the tokenizer of {cassette.path} ({location!r}) offline: {error}. Set"
            f" {TOKENIZER_ENV}=DIR to a folder with the tokenizer files of"
            f" {cassette.header.get('model')!r}"
        ) from None


class ReplayClient:
    """A service, training or sampling client of the recorded run."""

    def __init__(self, replay: Replay, client_id: str):
        self._replay = replay
        self._id = client_id
        self._kind = client_kind(client_id)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name in FUTURE_METHODS[self._kind]:
            return lambda *args, **kwargs: self._replay.future(self._id, name, args, kwargs)
        if name in SYNC_METHODS[self._kind]:
            return lambda *args, **kwargs: self._replay.sync(self._id, name, args, kwargs)
        recorded = sorted(FUTURE_METHODS[self._kind] | SYNC_METHODS[self._kind])
        raise AttributeError(
            f"a replayed {self._kind} client has no {name!r}; cassettes record {recorded}"
        )


class ReplayServiceClient(ReplayClient):
    """The service client of the run recorded in `cassette`.

    `realtime` delivers each result its recorded latency after the request, reproducing the
    run's timing. `tokenizer` (or $HARNESS_REPLAY_TOKENIZER) is a folder or cached hub id to load
    the tokenizer from when the recorded one is not on this machine.
    """

    def __init__(self, cassette: str | Path, realtime: bool = False, tokenizer: str | None = None):
        override = tokenizer or os.environ.get(TOKENIZER_ENV)
        super().__init__(Replay(read_cassette(cassette), realtime, override), "service")

    @property
    def replay(self) -> Replay:
        return self._replay

    def __enter__(self) -> ReplayServiceClient:
        return self

    def step_scores(self, step: int, rewards_P_G: np.ndarray, advantages_P_G: np.ndarray) -> None:
        """Stop at the first step whose rewards or advantages differ from the recorded ones
        (a different reward or advantages function than the recorded run's, say)."""
        recorded = self._replay.cassette.scores.get(step)
        if recorded is None:  # recorded before cassettes kept scores
            return
        for what, was, now in zip(
            ("rewards", "advantages"), recorded, (rewards_P_G, advantages_P_G), strict=True
        ):
            difference = _first_differing_row(was, now)
            if difference is not None:
                raise self._replay.mismatch(
                    f"step {step}: the {what} differ from the recording, first in group"
                    f" {difference}: recorded {_row(was, difference)}, replay"
                    f" {_row(now, difference)} (the cassette's header names the recorded run's"
                    " reward and advantages functions)"
                )

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        rest = self._replay.unreplayed()
        if exc_type is None and rest:
            raise self._replay.mismatch(
                f"the replay ended, but the recording goes on for {len(rest)} more call(s),"
                f" from call {rest[0].index} ({rest[0].name})"
            )


def _row(values_P_G: Any, p: int) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in np.asarray(values_P_G)[p].tolist()) + "]"


def _first_differing_row(recorded: Any, replayed: np.ndarray) -> int | None:
    recorded = np.asarray(recorded)
    if recorded.shape != replayed.shape:
        return 0
    same_P = np.isclose(replayed, recorded, rtol=1e-6, atol=1e-7).all(axis=1)
    return None if same_P.all() else int(np.argmin(same_P))


def recorded_header(cassette: str | Path) -> dict[str, Any]:
    """The cassette's header; ConfigError (one line) for a file that is not a cassette."""
    try:
        return read_header(cassette)
    except CassetteError as error:
        raise ConfigError(f"--cassette: {error}") from None


def recorded_reward_fn(cassette: str | Path) -> Callable[[str, str], dict[str, float]] | None:
    """The reward function the cassette's run trained with, when not the task's own."""
    name = recorded_header(cassette).get("reward")
    if name is None:
        return None
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith(REWARD_MODULES):
        raise ConfigError(
            f"--cassette={cassette} was recorded with the reward {name}, which a replay does not"
            f" import (only rewards from {', '.join(m + '*' for m in REWARD_MODULES)}); replay"
            " it from Python with train(..., reward_fn=...)"
        )
    try:
        return functools.reduce(getattr, qualname.split("."), import_module(module_name))
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"--cassette={cassette} was recorded with the reward {name}, which does not import"
            f" here ({error}); run from the repository's root"
        ) from None
