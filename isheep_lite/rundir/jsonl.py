"""Records as JSON Lines, one whole line at a time: a killed writer leaves at most a torn last line, which the next open drops."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from isheep_lite.rundir.files import atomic_path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All whole records of a JSONL file; a torn (unparseable) last line is ignored."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last line (or last before a trailing newline) may be torn
                break
            raise
    return out


def truncate_torn_tail(path: Path) -> None:
    """Cut a file back to its last complete line, so appends continue on a clean boundary."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class JsonlWriter:
    """Append records one whole line at a time (flush + fsync per `flush()` call)."""

    def __init__(self, path: Path):
        truncate_torn_tail(path)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any], sync: bool = True) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if sync:
            self.flush()

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole file atomically (temp + rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
