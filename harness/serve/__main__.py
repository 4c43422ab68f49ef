"""`python -m harness.serve --model=DIR [--model=DIR ...] --port=8000`: serve until Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import tyro

from harness.weather import load_weather

from .server import LocalTinkerServer


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Serve the local backend over Tinker's HTTP protocol.

    Clients use `tinker.ServiceClient(base_url="http://HOST:PORT", api_key=...)`. When
    TINKER_API_KEY is set where the server starts, requests must carry that key; otherwise any
    key starting with `tml-` is accepted, and the server listens on loopback addresses only.
    """

    model: tuple[str, ...]
    """Base models to serve: local Hugging Face model directories (or ids in the local cache)."""
    port: int = 8000
    """Port to listen on (0 picks a free one)."""
    host: str = "127.0.0.1"
    """Address to listen on; one beyond loopback needs TINKER_API_KEY set."""
    storage_dir: str = "tinker-local-storage"
    """Where checkpoints (tinker://... paths) are stored."""
    seed: int | None = None
    """Seed for what requests leave random (LoRA init without a seed, unseeded sampling)."""
    device: str | None = None
    """torch device (default: cuda if available, else cpu)."""
    log_level: str = "info"
    """uvicorn log level."""
    weather: str | None = None
    """A weather profile (TOML, e.g. fixtures/weather/tinker-like.toml): the cloud's latency
    and faults, at the HTTP level. A `die` fault exits with status 75; restart the server on
    the same --storage_dir and the checkpoints are there."""


def main(argv: list[str] | None = None) -> int:
    config = tyro.cli(
        ServeConfig, args=argv, config=(tyro.conf.FlagConversionOff,), use_underscores=True
    )
    try:
        weather = load_weather(config.weather) if config.weather is not None else None
        server = LocalTinkerServer(
            config.model,
            config.storage_dir,
            host=config.host,
            port=config.port,
            api_key=os.environ.get("TINKER_API_KEY") or None,
            seed=config.seed,
            device=config.device,
            log_level=config.log_level,
            weather=weather,
        )
    except (ValueError, OSError) as error:  # a bad model, address or port: the user's to fix
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"serving {', '.join(config.model)} at {server.base_url} (checkpoints in"
        f" {config.storage_dir})"
        + (f" under the weather of {config.weather}" if config.weather else "")
        + "; Ctrl-C stops",
        file=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.serve_forever()
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
