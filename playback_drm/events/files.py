"""Blocking file helpers of the event sinks (called in worker threads, never on the event loop)."""

from __future__ import annotations

import os
from pathlib import Path


def append_bytes(path: Path, data: bytes, *, mode: int = 0o600, fsync: bool = False) -> None:
    """Append ``data`` with ``O_APPEND`` writes (so processes sharing a file never interleave a
    line), creating the file (and its folder) with ``mode``; ``fsync`` before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[bytes]:
    """The non-blank lines of ``path``; none if it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [line for line in data.split(b"\n") if line.strip()]


__all__ = ["append_bytes", "fsync_path", "read_lines"]
