"""`--backend=local-server`: the real `tinker` SDK against the local backend over HTTP.

A `LocalTinkerServer` starts on a free port of 127.0.0.1 for the run (or `base_url` names one
already running), and the run gets a genuine `tinker.ServiceClient`: the cloud's code path,
offline. The SDK's telemetry is off for the block, and tokenizers load from the model
directory the server names, so no request leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import tinker

from harness.serve.server import LocalTinkerServer
from harness.weather import Weather

# A server of our own gets a fresh key; one already running takes the user's, or any `tml-`.
_DEFAULT_KEY = "tml-local"
_CLOSE_TIMEOUT_S = 10.0


@contextlib.contextmanager
def local_server_service_client(
    model_name: str,
    storage_dir: str | Path,
    *,
    seed: int | None = None,
    base_url: str | None = None,
    weather: Weather | None = None,
) -> Iterator[tinker.ServiceClient]:
    """A `tinker.ServiceClient` on a local server serving `model_name` (under `weather`);
    the session finishes and the server (if this started it) stops when the block ends."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environ(TINKER_TELEMETRY="0"))
        if base_url is None:
            api_key = f"tml-local-{secrets.token_hex(16)}"
            server = LocalTinkerServer(
                [model_name], storage_dir, api_key=api_key, seed=seed, weather=weather
            )
            base_url = stack.enter_context(server).base_url
        else:
            api_key = os.environ.get("TINKER_API_KEY") or _DEFAULT_KEY
        client = tinker.ServiceClient(base_url=base_url, api_key=api_key)
        status = "errored"
        try:
            yield client
            status = "success"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            _finish(client, status)


def _finish(client: tinker.ServiceClient, status: str) -> None:
    """Finish the session, but never wait long on a server that is gone."""
    with contextlib.suppress(Exception):
        client.close(status).result(timeout=_CLOSE_TIMEOUT_S)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
