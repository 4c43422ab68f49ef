"""How a Tinker ServiceClient is obtained: the cloud through the real SDK, the local backend
(in process, or behind a local Tinker-protocol server), or a recorded run replayed.

Every backend answers the SDK's client surface with real `tinker.types` objects, so the loop
never knows which one it talks to.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from harness.config import Config, resolve_backend


@contextlib.contextmanager
def open_service_client(
    config: Config,
    environ: Mapping[str, str],
    reward_fn: Callable[..., Any] | None = None,
    plugged: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """The run's service client, recording to --record_cassette when asked (with the name of
    `reward_fn`, a reward replacing the task's, and `plugged`, what identifies the functions the
    flags plugged in); whatever the backend started (a local server) stops when the block ends."""
    backend = resolve_backend(config, environ)
    with contextlib.ExitStack() as stack:
        service = stack.enter_context(_backend_service(backend, config))
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
def _backend_service(backend: str, config: Config) -> Iterator[Any]:
    # Checkpoints of the local backends live with the run, so rerunning the command finds them.
    storage_dir = Path(config.log_path) / "tinker-storage"
    weather = None
    if config.weather is not None:
        from harness.weather import load_weather

        weather = load_weather(config.weather)
    if backend == "tinker":
        import tinker

        # The SDK reads TINKER_API_KEY itself; the key never passes through the harness.
        yield tinker.ServiceClient(base_url=config.base_url)
    elif backend == "local":
        from harness.backends.local import LocalServiceClient

        yield LocalServiceClient(storage_dir=storage_dir, seed=config.seed, weather=weather)
    elif backend == "local-server":
        from harness.backends.local_server import local_server_service_client

        with local_server_service_client(
            config.model_name,
            storage_dir,
            seed=config.seed,
            base_url=config.base_url,
            weather=weather,
        ) as service:
            yield service
    elif backend == "replay":
        from harness.backends.replay import ReplayServiceClient

        yield ReplayServiceClient(config.cassette, realtime=config.replay_realtime)
    else:
        raise ValueError(f"unknown backend {backend!r}")
