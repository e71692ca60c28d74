"""The JetStream sink's durable overflow buffer: append-only JSON-lines segment files (one
CloudEvent per line, exactly the bytes published), rotated at ``EVENTS_SPILL_SEGMENT_BYTES``,
bounded by ``EVENTS_SPILL_MAX_BYTES`` in total, guarded by an ``flock`` (one process per folder).
A segment is deleted once every event in it is acknowledged. ``EVENTS_SPILL_FSYNC``: ``batch``
fsyncs after every write batch, ``segment`` when a segment is closed, ``never`` leaves it to the
OS. All file I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections import deque
from pathlib import Path
from typing import IO

from playback_drm.events.files import append_bytes, fsync_path
from playback_drm.events.model import SpillDirectoryBusy


def _append_segments(plan: list[tuple[Path, list[bytes]]], fsync: str, filled: list[Path]) -> None:
    """Write each segment's lines; fsync per policy (``segment``: the ``filled`` ones)."""
    for path, lines in plan:
        append_bytes(path, b"\n".join(lines) + b"\n", fsync=fsync == "batch")
    if fsync == "segment":
        for path in filled:
            fsync_path(path)


class SpillBuffer:
    """Bounded on-disk FIFO of JSON-lines segments. State lives on the event loop; only file I/O
    runs in threads. Callers serialise :meth:`write` and :meth:`seal` (the sink's disk lock)."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int, fsync: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.bytes = 0
        self.sealed: deque[tuple[Path, int]] = deque()
        self._active: Path | None = None
        self._active_bytes = 0
        self._next_seq = 0
        self._lock_file: IO[bytes] | None = None

    def open(self) -> list[tuple[Path, int]]:
        """Lock the directory; return the segments a previous process left (oldest first)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = (self.directory / ".lock").open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SpillDirectoryBusy(
                f"spill directory {self.directory} is used by another process"
            ) from None
        self._lock_file = lock
        leftovers: list[tuple[Path, int]] = []
        for path in sorted(self.directory.glob("*.jsonl")):
            size = path.stat().st_size
            if size == 0:
                path.unlink()
                continue
            leftovers.append((path, size))
            self.bytes += size
            with contextlib.suppress(ValueError):
                self._next_seq = max(self._next_seq, int(path.stem) + 1)
        return leftovers

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    @property
    def empty(self) -> bool:
        return self._active is None and not self.sealed

    def room(self) -> int:
        return max(0, self.max_bytes - self.bytes)

    async def write(self, lines: list[bytes]) -> int:
        """Append as many ``lines`` as fit in the byte bound; return how many were written.

        Segments are rotated so none grows past ``segment_bytes`` (unless one line is larger).
        """
        room = self.room()
        plan: list[tuple[Path, list[bytes]]] = []
        sealed: list[tuple[Path, int]] = []
        written = total = 0
        for line in lines:
            size = len(line) + 1
            if total + size > room:
                break
            if (
                self._active is not None
                and self._active_bytes + size > self.segment_bytes
                and self._active_bytes > 0
            ):
                sealed.append((self._active, self._active_bytes))
                self._active = None
            if self._active is None:
                self._active = self.directory / f"{self._next_seq:012d}.jsonl"
                self._next_seq += 1
                self._active_bytes = 0
            if not plan or plan[-1][0] != self._active:
                plan.append((self._active, []))
            plan[-1][1].append(line)
            self._active_bytes += size
            total += size
            written += 1
        if plan:
            filled = [path for path, _ in sealed]
            await asyncio.to_thread(_append_segments, plan, self.fsync, filled)
        self.bytes += total
        self.sealed.extend(sealed)
        return written

    async def seal(self) -> None:
        """Close the active segment so it can be replayed."""
        if self._active is None:
            return
        path, size = self._active, self._active_bytes
        self._active, self._active_bytes = None, 0
        if self.fsync == "segment":
            await asyncio.to_thread(fsync_path, path)
        self.sealed.append((path, size))

    async def remove(self, path: Path, size: int) -> None:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        self.bytes = max(0, self.bytes - size)


__all__ = ["SpillBuffer"]
