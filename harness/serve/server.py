"""`LocalTinkerServer`: the local backend behind Tinker's HTTP protocol, on uvicorn.

In the foreground (`serve_forever`, what `python -m harness.serve` runs) or on a background
thread (`start`/`stop`, or `with LocalTinkerServer(...) as server:`). Stopping fails every
request still in flight with a message saying the server stopped, before the connections
close, so an SDK waiting on a result gets an error instead of polling a dead port.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn

from harness.backends.local import LocalServiceClient
from harness.weather import Weather

from .app import create_app
from .state import Limits, ServerState
from .weather import QUIET_DROPS, ServerWeather, die, dropping_connections

_START_TIMEOUT_S = 60.0


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, base_url: str):
        super().__init__(config)
        self.state = state
        self.base_url = base_url

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn waits for open requests: long polls then answer at once.
        self.state.close(f"the local Tinker server at {self.base_url} stopped")
        await super().shutdown(sockets)


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key: a ValueError unless every address
    `host` names is loopback, or `api_key` is set."""
    if api_key is not None:
        return
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    exposed = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if exposed:
        raise ValueError(
            f"refusing to listen on {host} ({', '.join(exposed)}) without an API key: set"
            " TINKER_API_KEY where the server starts, or listen on 127.0.0.1"
        )


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port. It is made with proto=IPPROTO_TCP, as asyncio's
    own are: only then does asyncio turn Nagle's algorithm off on the connections it accepts
    (with it on, each answer waits ~40 ms for the client's delayed ACK)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen()
    return listener


class LocalTinkerServer:
    """Serves `models` (local model directories or cached hub ids, loaded at start) on
    `host:port` (0 picks a free port). Checkpoints live under `storage_dir`; their TTLs run on
    `clock` (seconds since the epoch). Without `api_key`, only loopback addresses are served.
    `weather` (`harness.weather.load_weather`) gives the backend the profile's latency and the
    HTTP layer its faults; a `die` fault calls `on_die` (by default the process exits at once
    with status 75, as a crash would, taking a server on a thread down with its process)."""

    def __init__(
        self,
        models: Sequence[str],
        storage_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        seed: int | None = None,
        device: str | None = None,
        limits: Limits | None = None,
        log_level: str = "warning",
        access_log: bool = False,
        clock: Callable[[], float] = time.time,
        weather: Weather | None = None,
        on_die: Callable[[], None] = die,
    ):
        if not models:
            raise ValueError("serve at least one model")
        check_exposure(host, api_key)
        service = LocalServiceClient(
            storage_dir,
            device=device,
            seed=seed,
            clock=clock,
            weather=weather.without_faults() if weather is not None else None,
        )
        # Loaded now: a bad model fails here, and the first create is fast.
        served = {name: service.base(name)[0] for name in models}
        limits = limits or Limits()
        faults = None
        if weather is not None and weather.faults:
            faults = ServerWeather(weather, on_die)
            logging.getLogger("uvicorn.error").addFilter(QUIET_DROPS)
        self.state = ServerState(service, served, limits, weather=faults)
        self._socket = _listening_socket(host, port)
        host, port = self._socket.getsockname()[:2]
        self.base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        app = create_app(self.state, api_key)
        config = uvicorn.Config(
            dropping_connections(app) if faults is not None else app,
            log_level=log_level,
            access_log=access_log,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = _Uvicorn(config, self.state, self.base_url)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C or SIGTERM)."""
        self._server.run(sockets=[self._socket])

    def start(self) -> LocalTinkerServer:
        """Serve on a background thread; return once the server accepts requests."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="tinker-local-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local Tinker server at {self.base_url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Fail what is in flight, close the connections, and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._socket.close()

    def __enter__(self) -> LocalTinkerServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
