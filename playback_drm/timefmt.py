"""UTC timestamps as RFC 3339 text, for events, logs and API answers.

The date and time of a second are formatted once (cached): events, log lines and licenses come
in bursts within the same second, and ``strftime`` is the expensive part.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache


@lru_cache(maxsize=64)
def utc_second(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second, in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def rfc3339_seconds(timestamp: float) -> str:
    """Whole seconds (the fraction dropped) and a ``Z``."""
    return f"{utc_second(math.floor(timestamp))}Z"


def rfc3339_millis(timestamp: float) -> str:
    """Milliseconds (truncated) and a ``Z``."""
    millis = int(timestamp * 1000) % 1000
    return f"{utc_second(math.floor(timestamp))}.{millis:03d}Z"


def rfc3339_micros(timestamp: float) -> str:
    """Microseconds and a ``Z``: what ``datetime.fromtimestamp(timestamp, UTC)`` formats, with
    its rounding (half-even microseconds), without building a datetime."""
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole += 1.0
        micros -= 1_000_000
    elif micros < 0:
        whole -= 1.0
        micros += 1_000_000
    return f"{utc_second(int(whole))}.{micros:06d}Z"
