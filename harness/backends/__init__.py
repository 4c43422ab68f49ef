"""How a Tinker ServiceClient is obtained: the cloud through the real SDK, the local backend
(in process, or behind a local Tinker-protocol server), or a recorded run replayed.

Every backend answers the SDK's client surface with real `tinker.types` objects, so the loop
never knows which one it talks to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from harness.config import ConfigError, resolve_backend


def check_reachable(base_url: str | None, timeout_s: float = 5.0) -> None:
    """Raise ConfigError in one line when the Tinker service's host does not take a connection:
    offline, the SDK would retry for minutes before saying anything."""
    from tinker.lib.base_url import resolve_base_url

    url = urllib.parse.urlsplit(resolve_base_url(base_url))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        raise ConfigError(
            f"cannot reach the Tinker service at {url.geturl()} ({error}); check the network,"
            " or run offline with --backend=local"
        ) from None


class BackendConfig(Protocol):
    """What choosing a backend reads: the training Config has it, so does the evaluation's."""

    backend: str
    base_url: str | None
    model_name: str
    seed: int
    log_path: str
    record_cassette: str | None
    cassette: str | None
    replay_realtime: bool


@contextlib.contextmanager
def open_service_client(
    config: BackendConfig,
    environ: Mapping[str, str],
    reward_fn: Callable[..., Any] | None = None,
    plugged: Mapping[str, Any] | None = None,
    storage_dir: Path | None = None,
) -> Iterator[Any]:
    """The run's service client, recording to --record_cassette when asked (with the name of
    `reward_fn`, a reward replacing the task's, and `plugged`, what identifies the functions the
    flags plugged in); whatever the backend started (a local server) stops when the block ends.
    The local backends keep `tinker://` checkpoints in `storage_dir`, by default the run's own
    `{log_path}/tinker-storage`, so rerunning the command finds them."""
    backend = resolve_backend(config, environ)
    storage_dir = storage_dir or Path(config.log_path) / "tinker-storage"
    with contextlib.ExitStack() as stack:
        service = stack.enter_context(_backend_service(backend, config, storage_dir))
        if config.record_cassette is not None:
            from harness.backends.record import RecordingServiceClient, reward_name

            service = stack.enter_context(
                RecordingServiceClient(
                    service,
                    config.record_cassette,
                    backend=backend,
                    config=dataclasses.asdict(config),
                    reward=reward_name(reward_fn),
                    plugged=plugged,
                    environ=environ,
                )
            )
        yield service


def scores_hook(service_client: Any) -> Callable[[int, Any, Any], None] | None:
    """Where a step's rewards and advantages go: a recording keeps them, a replay checks them
    against the recorded ones; other backends take none."""
    return getattr(service_client, "step_scores", None)


@contextlib.contextmanager
def _backend_service(backend: str, config: BackendConfig, storage_dir: Path) -> Iterator[Any]:
    weather = _weather(config)
    if backend == "tinker":
        import tinker

        # The SDK reads TINKER_API_KEY itself; the key never passes through the harness.
        yield tinker.ServiceClient(base_url=config.base_url)
    elif backend == "local":
        from harness.backends.local import LocalServiceClient

        yield LocalServiceClient(storage_dir=storage_dir, seed=config.seed, weather=weather)
    elif backend == "local-server":
        from harness.serve.client import local_server_service_client

        with local_server_service_client(
            config.model_name,
            storage_dir,
            seed=config.seed,
            base_url=config.base_url,
            weather=weather,
        ) as service:
            yield service
    elif backend == "synthetic":
        with _synthetic_service(config, storage_dir, weather) as service:
            yield service
    elif backend == "replay":
        from harness.backends.replay_service import ReplayServiceClient

        yield ReplayServiceClient(config.cassette, realtime=config.replay_realtime)
    else:
        raise ValueError(f"unknown backend {backend!r}")


def _weather(config: BackendConfig) -> Any:
    """The weather profile `--weather` names, or None (the evaluation's config has no flag)."""
    path = getattr(config, "weather", None)
    if path is None:
        return None
    from harness.weather import load_weather

    return load_weather(path)


def _synthetic_service(config: BackendConfig, storage_dir: Path, weather: Any) -> Any:
    """The synthetic model over the run's task (it answers the task's questions) in the
    model's tokenizer (for Qwen3 models offline, the Qwen3-vocabulary fixture)."""
    from harness.backends.synthetic import SyntheticServiceClient
    from harness.data import load_problems
    from harness.estimate import load_tokenizer

    dataset = getattr(config, "dataset", "gsm8k")
    dataset_path = getattr(config, "dataset_path", None)
    problems = [
        problem
        for split in ("train", "test")
        for problem in load_problems(dataset, split, dataset_path)
    ]
    tokenizer, _ = load_tokenizer(config.model_name)
    return SyntheticServiceClient(
        storage_dir, tokenizer, problems, seed=config.seed, weather=weather
    )
