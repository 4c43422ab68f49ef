"""JSON-lines files that survive a kill at any moment: whole lines are appended and fsynced,
and a line cut short is skipped on reading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append_json_line(path: str | Path, row: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")  # end a line a kill cut short, so this one stays whole
        f.write((json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_json_lines(path: str | Path) -> list[Any]:
    return [row for _, row in numbered_json_lines(path)]


def numbered_json_lines(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, row) of each line that reads as JSON; no file, no rows."""
    return [(number, row) for number, text, row in _lines(path) if row is not _UNREADABLE]


def unreadable_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-empty line that does not read as JSON (a line a kill
    cut short stays in the file, ended by the next append)."""
    return [(number, text) for number, text, row in _lines(path) if row is _UNREADABLE]


_UNREADABLE = object()


def _lines(path: str | Path) -> list[tuple[int, str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    lines = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                lines.append((number, line, json.loads(line)))
            except json.JSONDecodeError:
                lines.append((number, line, _UNREADABLE))
    return lines


def rewrite_json_lines(path: str | Path, rows: list[Any]) -> None:
    """Replace the file's content atomically (write beside it, then rename)."""
    write_atomically(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def write_atomically(path: str | Path, text: str) -> None:
    """Replace the file's content with `text`: a kill leaves the old content or the new one,
    never a part (written beside it, fsynced, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write (a full disk): no leftover
