"""Request bodies read within bounds: on the wire, after zstd, and as JSON.

A body is read from the socket chunk by chunk and refused (413) once it passes its bound, so a
client cannot make the server hold more than the bound in memory. zstd output is drawn from a
stream reader in small pieces: a small compressed body that expands without limit (a "zstd
bomb") is refused once its output passes `max_decoded` bytes, never expanded whole. Bodies are
returned as the buffers they were read into, uncopied, so a body costs its size once.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import zstandard

from .state import HttpError

_PIECE = 1 << 20


async def read_bounded(chunks: AsyncIterator[bytes], max_bytes: int, what: str) -> bytearray:
    """The bytes of `chunks`, or a 413 as soon as they pass `max_bytes`."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise too_large(what, max_bytes)
    return body


def decode(body: bytearray, encoding: str, max_decoded: int) -> bytearray:
    """The body without its content-encoding (zstd or none), at most `max_decoded` bytes."""
    if encoding == "identity":
        return body
    if encoding != "zstd":
        raise HttpError(415, f"content-encoding {encoding!r} is not supported (zstd or none)")
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
    decoded = bytearray()
    try:
        while piece := reader.read(_PIECE):
            decoded += piece
            if len(decoded) > max_decoded:
                raise too_large("the decompressed body", max_decoded)
    except zstandard.ZstdError as error:
        raise HttpError(400, f"body is not valid zstd: {error}") from error
    return decoded


def parse_json_object(body: bytes | bytearray) -> dict[str, Any]:
    """A JSON object, or a 400 naming what is wrong (nesting too deep included)."""
    try:
        value = json.loads(body)
    except RecursionError as error:
        raise HttpError(400, "body is not JSON the server accepts: nested too deeply") from error
    except ValueError as error:
        raise HttpError(400, f"body is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise HttpError(400, "body must be a JSON object")
    return value


def too_large(what: str, max_bytes: int) -> HttpError:
    return HttpError(413, f"{what} exceeds this server's limit of {max_bytes:,} bytes")
