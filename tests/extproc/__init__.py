"""Tests of the ext_proc service. Shared by the rewriter tests: a marking mapper and its inverse."""

from __future__ import annotations

from extproc.uri import UriRef

MARK = "pdt=TEST"


def add_mark(uri: str) -> str:
    """Add the ``pdt=TEST`` query parameter as a signer would: ``?`` or ``&``, before a fragment."""
    path, hash_sign, fragment = uri.partition("#")
    return f"{path}{'&' if '?' in path else '?'}{MARK}{hash_sign}{fragment}"


def strip_marks(document: bytes) -> bytes:
    """Undo :func:`add_mark` everywhere in a rewritten document (XML-escaped or not)."""
    for added in (b"&amp;" + MARK.encode(), b"&" + MARK.encode(), b"?" + MARK.encode()):
        document = document.replace(added, b"")
    return document


class Recorder:
    """A mapper that marks every URI and remembers what it was offered, in order."""

    def __init__(self) -> None:
        self.refs: list[UriRef] = []

    def __call__(self, ref: UriRef) -> str:
        self.refs.append(ref)
        return add_mark(ref.raw)

    @property
    def raws(self) -> list[str]:
        return [ref.raw for ref in self.refs]
