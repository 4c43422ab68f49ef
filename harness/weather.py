"""Weather for the offline twin: how long the service takes and how it fails, from a TOML profile.

A profile (`load_weather`) gives the latency model (training clock cycles, sampling time to
first token and per token with a cap on concurrent requests, save and load times, one
`time_scale` for all of them) and a list of faults, each at a named call of a kind (the 3rd
`forward_backward`) or at a rate per call, seeded. The pieces that decide *when* and *what*
are pure and take times as arguments, so they are tested as state machines on a fake clock:
`TrainingTimeline` (when a model's queued request finishes), `SampleSlots` (when a sampling
request finishes under the concurrency cap) and `FaultSchedule` (which call fails, and how).
The local backend (`harness.backends.local.weather`) and the local server
(`harness.serve.weather`) turn their decisions into sleeps and errors.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import logging
import math
import random
import threading
import tomllib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast, get_args

Call = Literal[
    "create_model",
    "load_state",
    "forward",
    "forward_backward",
    "optim_step",
    "save_state",
    "save_weights_for_sampler",
    "sample",
]
Error = Literal["status", "disconnect", "failed", "hang", "expired", "die", "checkpoint_expired"]
When = Literal["before", "after"]
CALLS: tuple[Call, ...] = get_args(Call)
ERRORS: tuple[Error, ...] = get_args(Error)
SAVES: tuple[Call, ...] = ("save_state", "save_weights_for_sampler")
# Without a handler configured, Python prints warnings as bare lines on stderr.
_log = logging.getLogger(__name__)


class WeatherError(ValueError):
    """A bad profile; the message is one line naming the file and the key."""


@dataclasses.dataclass(frozen=True)
class Latency:
    """Seconds, before `time_scale`. Zero everywhere answers at once, as without weather."""

    cycle_s: float = 0.0
    """Training clock cycle: a request queued when a cycle starts runs in it (0: no cycles)."""
    cycle_tokens: int = 0
    """Tokens (of Datums' model inputs) one clock cycle trains; more spill into the next
    cycles (0: no limit). Applied in process (the local and synthetic backends)."""
    ttft_s: float = 0.0
    """Sampling: time to the first token."""
    per_token_s: float = 0.0
    """Sampling: time per generated token (of the request's longest sequence)."""
    max_concurrent_samples: int = 0
    """Sampling requests served at once; later ones wait for a slot (0: no cap)."""
    save_s: float = 0.0
    """save_state / save_weights_for_sampler, after the requests queued before it."""
    load_s: float = 0.0
    """A training or sampling client from a checkpoint."""


@dataclasses.dataclass(frozen=True)
class Fault:
    """`error` on calls of kind `call`: the `at`-th one and the `count - 1` after it, or
    each one with probability `rate` (decided from the profile's seed and the call's number,
    so the same calls fail however calls of other kinds interleave)."""

    call: Call
    error: Error
    when: When = "before"
    """before: the request is not applied; after: it is applied and then its answer fails."""
    status: int = 503
    """For error = "status": the HTTP status (408 or 5xx)."""
    at: int | None = None
    count: int = 1
    rate: float = 0.0
    expires_after_s: float = 0.0
    """For error = "checkpoint_expired": the saved checkpoint expires this long after saving."""

    def hits(self, n: int, seed: int, index: int) -> bool:
        """Whether this fault (number `index` of its profile) strikes the `n`-th call (1-based)."""
        if self.at is not None:
            return self.at <= n < self.at + self.count
        return random.Random(f"{seed}/{index}/{self.call}/{n}").random() < self.rate


@dataclasses.dataclass(frozen=True)
class Weather:
    time_scale: float = 1.0
    """Every latency (and `expires_after_s`) is multiplied by this: 0.001 makes 10 s 10 ms."""
    seed: int = 0
    """Seed of the rate faults."""
    latency: Latency = Latency()
    faults: tuple[Fault, ...] = ()
    source: str = "<weather>"
    """Where the profile came from, for messages."""

    def seconds(self, seconds: float) -> float:
        return seconds * self.time_scale

    def without_faults(self) -> Weather:
        return dataclasses.replace(self, faults=())


# -- loading --------------------------------------------------------------------------------

_TOP = {"time_scale", "seed", "latency", "faults"}
# The errors each call kind can meet: a checkpoint expires only when one was saved.
_ERRORS_OF = {
    call: tuple(e for e in ERRORS if e != "checkpoint_expired" or call in SAVES) for call in CALLS
}


def load_weather(path: str | Path) -> Weather:
    """The profile at `path`; WeatherError (one line, naming the file and key) if it is bad."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeatherError(f"{path}: no such weather profile") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WeatherError(f"{path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise WeatherError(f"{path}: not TOML ({error})") from None
    return parse_weather(table, str(path))


def parse_weather(table: Mapping[str, Any], source: str = "<weather>") -> Weather:
    def fail(key: str, problem: str) -> WeatherError:
        return WeatherError(f"{source}: {key}: {problem}")

    unknown = sorted(set(table) - _TOP)
    if unknown:
        raise fail(unknown[0], f"unknown key (a profile has {', '.join(sorted(_TOP))})")
    time_scale = _number(table, "time_scale", 1.0, fail)
    if not time_scale > 0:
        raise fail("time_scale", f"must be positive, got {time_scale}")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise fail("seed", f"must be an integer, got {seed!r}")
    latency_table = table.get("latency", {})
    if not isinstance(latency_table, dict):
        raise fail("latency", "must be a table ([latency])")
    latency = _dataclass(Latency, latency_table, "latency", fail)
    for field in dataclasses.fields(Latency):
        if getattr(latency, field.name) < 0:
            raise fail(f"latency.{field.name}", "must be >= 0")
    faults_list = table.get("faults", [])
    if not isinstance(faults_list, list):
        raise fail("faults", "must be an array of tables ([[faults]])")
    faults = tuple(_fault(entry, f"faults[{i}]", fail) for i, entry in enumerate(faults_list))
    return Weather(time_scale, seed, latency, faults, source)


def _fault(entry: Any, key: str, fail) -> Fault:
    if not isinstance(entry, dict):
        raise fail(key, "must be a table ([[faults]])")
    for required in ("call", "error"):
        if required not in entry:
            raise fail(f"{key}.{required}", "missing")
    if entry["call"] not in CALLS:
        raise fail(f"{key}.call", f"{entry['call']!r} is not one of {', '.join(CALLS)}")
    if entry["error"] not in _ERRORS_OF[entry["call"]]:
        raise fail(
            f"{key}.error",
            f"{entry['error']!r} is not one of {', '.join(_ERRORS_OF[entry['call']])}"
            f" (for {entry['call']})",
        )
    fault = _dataclass(Fault, entry, key, fail)
    if fault.when not in get_args(When):
        raise fail(f"{key}.when", f"{fault.when!r} is not 'before' or 'after'")
    if fault.error == "checkpoint_expired" and "when" in entry:
        raise fail(f"{key}.when", "a checkpoint expires after it was saved; drop 'when'")
    if fault.error == "status" and not (fault.status == 408 or 500 <= fault.status <= 599):
        raise fail(f"{key}.status", f"must be 408 or 5xx, got {fault.status}")
    if (fault.at is None) == ("rate" not in entry):
        raise fail(key, "give exactly one of 'at' (the n-th call) and 'rate' (per call)")
    if fault.at is not None and fault.at < 1:
        raise fail(f"{key}.at", f"calls count from 1, got {fault.at}")
    if fault.count < 1:
        raise fail(f"{key}.count", f"must be >= 1, got {fault.count}")
    if not 0 <= fault.rate <= 1:
        raise fail(f"{key}.rate", f"must lie in [0, 1], got {fault.rate}")
    if fault.expires_after_s < 0:
        raise fail(f"{key}.expires_after_s", "must be >= 0")
    return (
        dataclasses.replace(fault, when="after") if fault.error == "checkpoint_expired" else fault
    )


def _dataclass(cls: type, table: Mapping[str, Any], key: str, fail) -> Any:
    """`cls(**table)`, each value checked against its field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in table.items():
        if name not in fields:
            raise fail(f"{key}.{name}", f"unknown key (known: {', '.join(fields)})")
        kind = fields[name].type
        if kind in ("float",) and not _is_number(value):
            raise fail(f"{key}.{name}", f"must be a number, got {value!r}")
        if kind in ("int", "int | None") and not _is_int(value):
            raise fail(f"{key}.{name}", f"must be an integer, got {value!r}")
        if kind in ("Call", "Error", "When") and not isinstance(value, str):
            raise fail(f"{key}.{name}", f"must be a string, got {value!r}")
    return cls(**{k: float(v) if fields[k].type == "float" else v for k, v in table.items()})


def _number(table: Mapping[str, Any], name: str, default: float, fail) -> float:
    value = table.get(name, default)
    if not _is_number(value):
        raise fail(name, f"must be a number, got {value!r}")
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(cast(float, value))


# -- when things finish -----------------------------------------------------------------------


class TrainingTimeline:
    """When each request of one model's queue finishes, in seconds of some clock.

    Clock cycles of `cycle_s` start at every multiple of it. A cycle request (forward,
    forward_backward, optim_step) runs in the first cycle that starts at or after it was queued
    and after the saves ahead of it finished, and finishes when that cycle ends: requests queued
    back to back before a cycle starts share it. With `cycle_tokens`, a cycle trains that many
    tokens: a request fills the cycle the requests ahead of it left room in (or its first
    cycle), spills its remaining tokens into the cycles after, and finishes when the cycle of
    its last token ends. A save takes `save_s` after everything ahead of it finished. No
    request finishes before one queued ahead of it.
    """

    def __init__(self, cycle_s: float, save_s: float = 0.0, cycle_tokens: int = 0):
        self.cycle_s = cycle_s
        self.save_s = save_s
        self.cycle_tokens = cycle_tokens
        self._last_finish = -math.inf
        self._last_save = -math.inf
        # The cycle being filled (its start) and the tokens already in it.
        self._filling = -math.inf
        self._filled = 0

    def cycle_start(self, t: float) -> float:
        """The first cycle start at or after `t`."""
        if self.cycle_s == 0:
            return t
        # The tolerance keeps a request queued exactly at a cycle start (3 * 0.01) in it.
        return math.ceil(t / self.cycle_s - 1e-9) * self.cycle_s

    def queue(self, at: float, save: bool = False, tokens: int = 0) -> float:
        """The finish time of a request queued at `at` (a save, or a cycle request of
        `tokens` tokens)."""
        if save:
            finish = max(at, self._last_finish) + self.save_s
            self._last_save = finish
        else:
            finish = self._fill(self.cycle_start(max(at, self._last_save)), tokens) + self.cycle_s
        self._last_finish = max(self._last_finish, finish)
        return self._last_finish

    def _fill(self, first: float, tokens: int) -> float:
        """The start of the cycle a request's last token lands in, its first cycle `first`."""
        if not self.cycle_tokens or self.cycle_s == 0:
            return first
        if self._filling < first - 1e-9 * self.cycle_s:  # that cycle has started: a new one
            cycle, filled = first, tokens
        elif tokens == 0 or self._filled < self.cycle_tokens:  # room left (an optim_step fits)
            cycle, filled = self._filling, self._filled + tokens
        else:
            cycle, filled = self._filling + self.cycle_s, tokens
        spill = max(0, math.ceil(filled / self.cycle_tokens) - 1)
        self._filling = cycle + spill * self.cycle_s
        self._filled = filled - spill * self.cycle_tokens
        return self._filling


class SampleSlots:
    """When each sampling request finishes: `capacity` served at once (0: any number), first
    come first served. A request's service time (time to first token + per-token time) is
    known only once it has been generated, so `served` returns the finish times it settles:
    its own and those of requests behind it that waited only for it."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self._queue: collections.OrderedDict[Hashable, tuple[float, float | None]] = (
            collections.OrderedDict()
        )
        self._free_at: list[float] = [-math.inf] * capacity  # a heap of when each slot frees

    def arrive(self, key: Hashable, at: float) -> None:
        self._queue[key] = (at, None)

    def served(self, key: Hashable, service_s: float) -> list[tuple[Hashable, float]]:
        at, _ = self._queue[key]
        self._queue[key] = (at, service_s)
        settled = []
        while self._queue:
            head, (arrived, service) = next(iter(self._queue.items()))
            if service is None:
                break
            del self._queue[head]
            start = arrived
            if self.capacity:
                start = max(arrived, heapq.heappop(self._free_at))
                heapq.heappush(self._free_at, start + service)
            settled.append((head, start + service))
        return settled


def sampling_service_s(latency: Latency, tokens: int) -> float:
    """Seconds a sampling request is served for (before time_scale)."""
    return latency.ttft_s + latency.per_token_s * tokens


# -- what fails -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fired:
    call: Call
    n: int
    fault: Fault


def describe(fired: Fired, source: str) -> str:
    """How messages name a fault: `weather stormy.toml: failed after the 3rd forward_backward`."""
    n = fired.n
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"weather {source}: {fired.fault.error} {fired.fault.when} the {n}{suffix} {fired.call}"


def announce(fired: Fired, source: str) -> None:
    """Say that a fault was injected, as it happens (scripts/soak.py counts these lines)."""
    _log.warning("weather: injected %s", describe(fired, source))


class FaultSchedule:
    """Counts calls per kind and says which fault, if any, strikes each (the first matching
    one in profile order). Thread-safe; `fired` lists every fault it dealt."""

    def __init__(self, faults: Sequence[Fault], seed: int):
        self.faults = tuple(faults)
        self.seed = seed
        self.counts: collections.Counter[str] = collections.Counter()
        self.fired: list[Fired] = []
        self._lock = threading.Lock()

    def next(self, call: Call) -> Fired | None:
        """Count one more call of kind `call`; the fault that strikes it, if any."""
        with self._lock:
            self.counts[call] += 1
            n = self.counts[call]
            for index, fault in enumerate(self.faults):
                if fault.call == call and fault.hits(n, self.seed, index):
                    self.fired.append(Fired(call, n, fault))
                    return self.fired[-1]
            return None
