"""Shared pieces of the local-server tests: a server, an SDK client on it, and a guard that
fails any connection leaving 127.0.0.1."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import tinker

from harness.serve import Limits, LocalTinkerServer

REPO = Path(__file__).resolve().parent.parent.parent
TINY_MODEL = "fixtures/tiny-qwen3"
MODEL = str(REPO / TINY_MODEL)
KEY = "tml-test-7f3c9b1e2d"


def start_server(storage_dir: Path, limits: Limits | None = None, **options) -> LocalTinkerServer:
    return LocalTinkerServer(
        [MODEL], storage_dir, api_key=KEY, seed=0, limits=limits, **options
    ).start()


def sdk_client(server: LocalTinkerServer) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=server.base_url, api_key=KEY)


@contextlib.contextmanager
def sdk_session(server: LocalTinkerServer) -> Iterator[tinker.ServiceClient]:
    """An SDK client on `server` whose session finishes when the block ends."""
    client = sdk_client(server)
    try:
        yield client
    finally:
        client.close("success").result(timeout=30)


@contextlib.contextmanager
def serving(
    storage_dir: Path, limits: Limits | None = None, **options
) -> Iterator[LocalTinkerServer]:
    """A started server, with the SDK's telemetry off while it runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINKER_TELEMETRY", "0")
        server = start_server(storage_dir, limits, **options)
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse (and record) any socket connection to an address off this machine."""
    refused: list[str] = []
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def check(address) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not _is_loopback(host):
            refused.append(str(host))
            raise ConnectionRefusedError(f"test forbids connecting to {host}")

    def guarded_getaddrinfo(host, *args, **kwargs):
        check((host,))  # a name lookup would already leave the machine
        return getaddrinfo(host, *args, **kwargs)

    def guarded_connect(self, address):
        check(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(address)
        return connect_ex(self, address)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    try:
        yield refused
    finally:
        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        socket.getaddrinfo = getaddrinfo


def _is_loopback(host: str | bytes) -> bool:
    host = host.decode() if isinstance(host, bytes) else host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
