"""A local Tinker server: the local backend behind Tinker's HTTP protocol on 127.0.0.1, so the
real `tinker` SDK (`tinker.ServiceClient(base_url=..., api_key=...)`) drives it as it drives the
cloud. `python -m harness.serve --model=fixtures/tiny-qwen3 --port=8000` runs one."""

from .server import LocalTinkerServer
from .state import Limits

__all__ = ["Limits", "LocalTinkerServer"]
