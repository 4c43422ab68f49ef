"""Peak memory of the local server under hostile request bodies.

Run from the repository root:

    python scripts/bench_server_limits.py [--json_mb=400]

Starts `python -m harness.serve` on the tiny model in a child process, then sends, one at a
time: a zstd bomb (about 32 kB that expands to 1 GiB of zeros) as a forward_backward body and
as a JSON body, and a `json_mb` MB JSON body both streamed (chunked) and with its length
declared. Before each it resets the child's peak-RSS counter (`/proc/PID/clear_refs`, Linux)
and prints how far its peak rose above its resident size, with the status and message of the
answer. Without limits the bomb alone cost the server about 1 GB.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import tyro
import zstandard

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "tml-bench-limits"
_MIB = 1 << 20


@dataclass
class Args:
    json_mb: int = 400
    """Size of the large JSON bodies."""
    bomb_gib: int = 1
    """What the zstd bomb expands to."""


def zstd_bomb(expanded_gib: int) -> bytes:
    """zstd of `expanded_gib` GiB of zeros, compressed piece by piece (small in memory)."""
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = bytes(16 * _MIB)
    parts = [compressor.compress(zeros) for _ in range(expanded_gib * 64)]
    return b"".join(parts) + compressor.flush()


def _streamed_json(megabytes: int) -> Iterator[bytes]:
    yield b'{"session_id": "'
    for _ in range(megabytes):
        yield b"a" * _MIB
    yield b'"}'


def _kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def _start(storage: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "harness.serve", "--model=fixtures/tiny-qwen3"]
    child = subprocess.Popen(
        [*command, "--port=0", f"--storage_dir={storage}", "--log_level=warning"],
        cwd=REPO_ROOT,
        env={**os.environ, "TINKER_API_KEY": KEY},
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in child.stderr:
        if match := re.search(r" at (http://\S+) ", line):
            return child, match.group(1)
    raise RuntimeError(f"the server did not start (rc {child.wait()})")


def measure(args: Args) -> list[tuple[str, int, int, str]]:
    """(attack, peak MiB above resident, status, message) for each attack."""
    bomb = zstd_bomb(args.bomb_gib)
    big_json = b'{"session_id": "' + b"a" * (args.json_mb * _MIB) + b'"}'
    protobuf = {"content-type": "application/x-protobuf", "content-encoding": "zstd"}
    attacks = [
        ("zstd bomb, forward_backward", "forward_backward", bomb, protobuf),
        ("zstd bomb, JSON", "create_session", bomb, {"content-encoding": "zstd"}),
        (f"{args.json_mb} MB JSON, streamed", "create_session", None, {}),
        (f"{args.json_mb} MB JSON, length declared", "create_session", big_json, {}),
    ]
    results = []
    with tempfile.TemporaryDirectory() as storage:
        child, base_url = _start(Path(storage))
        try:
            for name, endpoint, body, headers in attacks:
                Path(f"/proc/{child.pid}/clear_refs").write_text("5")  # peak := current
                resident = _kib(child.pid, "VmRSS")
                content = body if body is not None else _streamed_json(args.json_mb)
                try:
                    answer = httpx.post(
                        f"{base_url}/api/v1/{endpoint}",
                        content=content,
                        headers={"X-API-Key": KEY, "content-type": "application/json"} | headers,
                        timeout=120,
                    )
                    status, message = answer.status_code, answer.json()["detail"]
                except httpx.TransportError as error:  # refused before the body was sent
                    status, message = 0, f"{type(error).__name__}: {error}"
                # Memory freed meanwhile can leave the peak below the resident size it was reset to.
                peak = max(0, _kib(child.pid, "VmHWM") - resident) // 1024
                results.append((name, peak, status, message))
        finally:
            child.terminate()
            child.wait()
    return results


def main(args: Args) -> None:
    for name, peak_mib, status, message in measure(args):
        print(f"{name:<34} peak +{peak_mib:>4} MiB  {status} {message}")


if __name__ == "__main__":
    main(tyro.cli(Args))
