"""`RecordingServiceClient`: any backend's service client, with every call written to a cassette.

The wrapped clients behave as the backend's do: the same results, errors and futures (the SDK's
`APIFuture`); each call's line is written when its result arrives, before the caller sees it.
Attributes beyond the recorded surface pass through unrecorded.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import tinker
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture

import harness
from harness.backends.cassette import (
    CLIENT_RESULTS,
    FORMAT,
    FUTURE_METHODS,
    SYNC_METHODS,
    BinaryWriter,
    binary_path,
    canonical_request,
)
from harness.backends.cassette_codec import encode, encode_or_repr
from harness.rollouts import sampling_purpose

# -- secrets --------------------------------------------------------------------------------------

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# Shorter values ("1", "true") are no credentials, and scrubbing them would corrupt the data.
MIN_SECRET_LENGTH = 8


def secrets_in(environ: Mapping[str, str]) -> dict[str, str]:
    """{value: variable name} of every environment variable whose name says it holds a secret
    (TOKENIZERS_PARALLELISM and the like do not count)."""
    found = {}
    for name, value in environ.items():
        words = name.upper().replace("TOKENIZER", "")
        if any(part in words for part in SECRET_NAME_PARTS) and len(value) >= MIN_SECRET_LENGTH:
            found[value] = name
    return found


def scrub(tree: Any, secrets: Mapping[str, str]) -> Any:
    """`tree` with every secret value in its strings replaced by `<redacted:NAME>`."""
    if isinstance(tree, str):
        for value in sorted(secrets, key=len, reverse=True):
            tree = tree.replace(value, f"<redacted:{secrets[value]}>")
        return tree
    if isinstance(tree, list):
        return [scrub(item, secrets) for item in tree]
    if isinstance(tree, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in tree.items()}
    return tree


def dumps_line(tree: Any, secrets: Mapping[str, str]) -> str:
    """One JSON line, secrets scrubbed (the tree is walked only if a secret shows in the text)."""
    text = json.dumps(tree, separators=(",", ":"), allow_nan=False)
    if any(json.dumps(value)[1:-1] in text for value in secrets):
        text = json.dumps(scrub(tree, secrets), separators=(",", ":"), allow_nan=False)
    return text


def reward_name(reward_fn: Callable[..., Any] | None) -> str | None:
    """`module:qualname` of a reward function given in place of the task's (None: the task's)."""
    if reward_fn is None:
        return None
    module = reward_fn.__module__
    spec = getattr(sys.modules.get(module), "__spec__", None)
    if module == "__main__" and spec is not None:  # run with python -m: its importable name
        module = spec.name
    return f"{module}:{getattr(reward_fn, '__qualname__', repr(reward_fn))}"


# A row of the cassette, made when it is written: given a list, its arrays go there (binary).
RowFn = Callable[[list | None], dict[str, Any]]


class Recorder:
    """The cassette being written: the header, then one row per call as it completes.

    JSON lines (a `.jsonl` path) are written when a call's result arrives, before the caller
    sees it. The binary format (any other path) is encoded, compressed and written by a
    thread of its own, off the critical path: a kill loses the rows still queued."""

    def __init__(self, path: str | Path, header: dict[str, Any], environ: Mapping[str, str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _keep_previous(self.path)
        self._secrets = secrets_in(environ)
        self._lock = threading.Lock()
        self._indices = itertools.count()
        self._start = time.perf_counter()
        self._queue: queue.SimpleQueue | None = None
        self.deferred = binary_path(self.path)
        """Whether rows are encoded when written, on the writer's thread."""
        if self.deferred:
            self._file = self.path.open("wb")
            self._binary = BinaryWriter(self._file)
            self._queue = queue.SimpleQueue()
            self._failure: BaseException | None = None
            self._thread = threading.Thread(target=self._write_queued, name="cassette-writer")
            self._thread.start()
        else:
            self._file = self.path.open("w", encoding="utf-8")
        self._write({"header": 1}, lambda arrays: header)

    def begin(self) -> tuple[int, float]:
        """The next call's index (its order at submission) and its submission time."""
        with self._lock:
            return next(self._indices), time.perf_counter()

    def write(
        self,
        index: int,
        client: str,
        method: str,
        request: RowFn,
        times: tuple[float, float],
        outcome: RowFn,
    ) -> None:
        """One call's row; `times` are its submission and the arrival of its result."""
        submitted, arrived = times
        self._write(
            {"index": index, "client": client, "method": method},
            lambda arrays: {
                "index": index,
                "client": client,
                "method": method,
                "request": request(arrays),
                **outcome(arrays),
                "submitted_s": round(submitted - self._start, 6),
                "latency_s": round(arrived - submitted, 6),
            },
        )

    def write_scores(self, step: int, rewards_P_G: np.ndarray, advantages_P_G: np.ndarray) -> None:
        rewards_P_G, advantages_P_G = np.array(rewards_P_G), np.array(advantages_P_G)
        self._write(
            {"step_scores": step},
            lambda arrays: {
                "step_scores": step,
                "rewards": encode(rewards_P_G, arrays),
                "advantages": encode(advantages_P_G, arrays),
            },
        )

    def _write(self, meta: dict[str, Any], row: RowFn) -> None:
        if self._queue is not None:
            self._queue.put((meta, row))
            return
        line = dumps_line(row(None), self._secrets) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)  # one whole line, flushed: a kill leaves valid JSONL
                self._file.flush()

    def _write_queued(self) -> None:
        while (item := self._queue.get()) is not None:
            meta, row = item
            try:
                arrays: list[np.ndarray] = []
                text = dumps_line(row(arrays), self._secrets)
                self._binary.write(meta, text, arrays)
            except BaseException as error:  # said when the recording closes
                self._failure = self._failure or error

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
        with self._lock:
            self._file.close()
        if self._queue is not None and self._failure is not None:
            raise self._failure


def _keep_previous(path: Path) -> None:
    """A rerun (say, resuming a killed run) keeps the earlier cassette as NAME.1.jsonl, ..."""
    if not path.exists():
        return
    for n in itertools.count(1):
        previous = path.with_name(f"{path.stem}.{n}{path.suffix}")
        if not previous.exists():
            path.rename(previous)
            return


def _concurrent(future: Any) -> Future:
    if isinstance(future, APIFuture):
        return future.future()
    if isinstance(future, Future):
        return future
    raise TypeError(f"the backend returned a {type(future).__name__}, not a future")


class RecordingClient:
    """One client of the wrapped backend; its recorded methods write a line per call."""

    def __init__(self, inner: Any, recorder: Recorder, client_id: str, kind: str):
        self._inner = inner
        self._recorder = recorder
        self._id = client_id
        self._kind = kind

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name in FUTURE_METHODS[self._kind]:
            return lambda *args, **kwargs: self._call_future(name, args, kwargs)
        if name in SYNC_METHODS[self._kind]:
            return lambda *args, **kwargs: self._call_sync(name, args, kwargs)
        return attribute

    def _begin(self, method: str, args: tuple, kwargs: dict) -> tuple[int, Callable[..., None]]:
        """The call's index, and how to write its line once its outcome is known (`outcome`:
        what it makes of the arrays list, or a constant)."""
        kind = self._kind
        if self._recorder.deferred:  # encoded by the writer's thread
            request = lambda arrays: canonical_request(kind, method, args, kwargs, arrays)  # noqa: E731
        else:
            encoded = canonical_request(kind, method, args, kwargs)
            request = lambda arrays: encoded  # noqa: E731
        index, submitted = self._recorder.begin()
        purpose = sampling_purpose() if method == "sample" else None
        marked = {} if purpose is None else {"purpose": purpose}

        def record(arrived: float | None = None, **outcome: Any) -> None:
            times = (submitted, arrived or time.perf_counter())

            def made(arrays: list | None) -> dict[str, Any]:
                made = {k: v(arrays) if callable(v) else v for k, v in outcome.items()}
                return made | marked

            self._recorder.write(index, self._id, method, request, times, made)

        return index, record

    def _call_future(self, method: str, args: tuple, kwargs: dict) -> APIFuture:
        index, record = self._begin(method, args, kwargs)
        try:
            inner = _concurrent(getattr(self._inner, method)(*args, **kwargs))
        except Exception as error:
            record(error=_error(error, "submit"))
            raise
        outer: Future = Future()
        outer.add_done_callback(lambda done: done.cancelled() and inner.cancel())

        def arrived(done: Future) -> None:
            arrived_at = time.perf_counter()  # the latency leaves out encoding the response
            try:
                result = done.result()
            except BaseException as error:  # cancellation included
                outcome = {"error": _error(error, "result")}
                deliver = functools.partial(outer.set_exception, error)
            else:
                value, response = self._wrap(method, index, result)
                outcome = {"response": response}
                deliver = functools.partial(outer.set_result, value)
            try:
                record(arrived_at, **outcome)
            finally:  # the caller gets its result even if the cassette cannot be written
                if not outer.done():
                    deliver()

        inner.add_done_callback(arrived)
        return AwaitableConcurrentFuture(outer)

    def _call_sync(self, method: str, args: tuple, kwargs: dict) -> Any:
        index, record = self._begin(method, args, kwargs)
        try:
            result = getattr(self._inner, method)(*args, **kwargs)
        except Exception as error:
            record(error=_error(error, "submit"))
            raise
        value, response = self._wrap(method, index, result)
        record(response=response)
        return value

    def _wrap(self, method: str, index: int, result: Any) -> tuple[Any, Any]:
        """What the caller gets, and what the cassette holds for it."""
        if method in CLIENT_RESULTS:
            kind = CLIENT_RESULTS[method]
            client_id = f"{kind}@{index}"
            return RecordingClient(result, self._recorder, client_id, kind), {"$client": client_id}
        if method == "get_tokenizer":
            return result, {"$tokenizer": tokenizer_source(result, self._recorder.path.parent)}
        if self._recorder.deferred:
            return result, lambda arrays: encode_or_repr(result, arrays)
        return result, encode_or_repr(result)


def _error(error: BaseException, at: str) -> dict[str, str]:
    """A call's error: raised when it was made (`submit`) or from its future (`result`)."""
    return {"type": type(error).__name__, "message": str(error), "at": at}


def tokenizer_source(tokenizer: Any, cassette_folder: Path) -> dict[str, str]:
    """Where replay finds this tokenizer without the model: a local folder (relative to the
    cassette, so a committed cassette and its model move together) or a hub id."""
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    if name and Path(name).is_dir():
        return {"dir": os.path.relpath(Path(name).resolve(), cassette_folder.resolve())}
    return {"name": name}


class RecordingServiceClient(RecordingClient):
    """`service` with every call recorded to `path`; a context manager that closes the file."""

    def __init__(
        self,
        service: Any,
        path: str | Path,
        *,
        backend: str,
        config: Mapping[str, Any],
        reward: str | None = None,
        plugged: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] = os.environ,
    ):
        header = {
            "cassette": FORMAT,
            "harness": harness.__version__,
            "tinker": tinker.__version__,
            "backend": backend,
            "model": config.get("model_name"),
            "config": encode(dict(config)),
            "reward": reward,
            "plugged": dict(plugged or {}),
            "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        super().__init__(service, Recorder(path, header, environ), "service", "service")

    def __enter__(self) -> RecordingServiceClient:
        return self

    def step_scores(self, step: int, rewards_P_G: np.ndarray, advantages_P_G: np.ndarray) -> None:
        """Keep a step's rewards and advantages, so a replay can tell where its differ."""
        self._recorder.write_scores(step, rewards_P_G, advantages_P_G)

    def __exit__(self, *exc_info: object) -> None:
        self._recorder.close()
