"""Reading documents that come from outside (request bodies, challenges, headers) without letting
their shape become our failure.

``json.loads`` on untrusted bytes fails in more ways than ``ValueError``: a document nested deeper
than the interpreter follows raises ``RecursionError``, and ``NaN``/``Infinity`` are accepted
although they are not JSON (RFC 8259). :func:`json_loads` turns every one of those into a
``ValueError``, so a caller's one ``except ValueError`` maps all of them to its own 400.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

__all__ = ["json_loads"]


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def json_loads(data: bytes | str) -> Any:
    """Strict JSON from untrusted input; raises ``ValueError`` (only) when it is not."""
    try:
        # a byte order mark is tolerated (RFC 8259 section 8.1 allows ignoring it)
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
