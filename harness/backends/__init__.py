"""How a Tinker ServiceClient is obtained: the cloud through the real SDK, or the local backend.

Every backend answers the SDK's client surface with real `tinker.types` objects, so the loop
never knows which one it talks to.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.config import Config, resolve_backend


def make_service_client(config: Config, environ: Mapping[str, str]) -> Any:
    backend = resolve_backend(config, environ)
    if backend == "tinker":
        import tinker

        # The SDK reads TINKER_API_KEY itself; the key never passes through the harness.
        return tinker.ServiceClient(base_url=config.base_url)
    if backend == "local":
        from harness.backends.local import LocalServiceClient

        # Checkpoints live with the run, so rerunning the command finds them.
        return LocalServiceClient(storage_dir=Path(config.log_path) / "tinker-storage")
    raise ValueError(f"unknown backend {backend!r}")
