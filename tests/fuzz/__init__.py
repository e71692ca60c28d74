"""Property-based fuzzing of every parser that sees outside input (issue 18).

One property throughout: whatever arrives, the answer is the documented refusal (a 4xx with a
stable code; for an origin's manifest a 502 with a code) or a success, never an unhandled
exception, a hang (pytest-timeout), or memory beyond a bound (:class:`MemoryBound`). Failing
examples Hypothesis found are kept as ``@example`` regression cases next to each property.

The number of examples follows the Hypothesis profile (``HYPOTHESIS_PROFILE``, see
``tests/conftest.py``): :func:`fuzz_settings` gives a test its share of it.
"""

from __future__ import annotations

import base64
import contextlib
import tracemalloc
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = ["MemoryBound", "b64_variants", "fuzz_settings", "json_values"]


# A fuzz suite runs this many times the profile's max_examples (dev: 400 per share of 1.0).
FUZZ_FACTOR = 4


def fuzz_settings(share: float = 1.0) -> settings:
    """``share`` of ``FUZZ_FACTOR`` times the loaded profile's ``max_examples``, no deadline."""
    return settings(
        max_examples=max(10, round(settings().max_examples * FUZZ_FACTOR * share)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


class MemoryBound:
    """Fails an example whose Python allocations peak above ``limit`` bytes (tracemalloc)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    @contextlib.contextmanager
    def __call__(self, what: str = "") -> Iterator[None]:
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            yield
        finally:
            peak = tracemalloc.get_traced_memory()[1] - base
            if started:
                tracemalloc.stop()
        assert peak <= self.limit, f"{what} peaked at {peak} bytes, bound {self.limit}"


# JSON values of every type, nested a little (headers, payloads, request bodies).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=16,
)


def _b64_url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_padded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def _b64_standard(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64_latin(data: bytes) -> str:
    return data.decode("latin-1")


@st.composite
def b64_variants(draw: st.DrawFn, data: bytes) -> str:
    """``data`` base64url-encoded as issuers do, or one of the ways clients and attackers get it
    wrong: padding, the standard alphabet, raw bytes, characters inserted or cut."""
    encode = draw(st.sampled_from([_b64_url] * 5 + [_b64_padded, _b64_standard, _b64_latin]))
    text = encode(data)
    mangle = draw(st.integers(0, 9))
    if mangle == 1 and text:
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.sampled_from(["=", " ", ".", "%", "\n", "é", "\x00", "+/"]))
            + text[at:]
        )
    elif mangle == 2 and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    return text
