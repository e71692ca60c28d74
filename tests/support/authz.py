"""An authz session registry for unit tests: the in-memory store and the default lifetimes."""

from __future__ import annotations

import time
from collections.abc import Callable

from authz.registry import SessionRegistry
from authz.sessions import Lifetimes, StreamLimits
from authz.sessionstore import MemorySessionStore


def memory_sessions(
    clock: Callable[[], float] = time.time, limits: StreamLimits | None = None
) -> SessionRegistry:
    """Sessions idle out after 1800 s, slots after 60 s (the defaults), one process."""
    return SessionRegistry(
        MemorySessionStore(Lifetimes(1_800_000, 60_000)),
        limits or StreamLimits(),
        check_interval=5.0,
        clock=clock,
        monotonic=clock,
    )
