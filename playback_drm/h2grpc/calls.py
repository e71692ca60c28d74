"""One gRPC call on the lean server: the HTTP/2 stream it travels on (its buffers and
flow-control window), the handler's view of it (``CallContext``, the part of
``grpc.aio.ServicerContext`` our servicers use) and the iterator of its request messages.

A stream talks to its connection only through :class:`StreamOwner`, so this module does not
import ``connection``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

import grpc

from playback_drm.h2grpc.frames import END_HEADERS, HEADERS, RESPONSE_HEADERS, frame


class StreamOwner(Protocol):
    """What a stream needs from the connection it belongs to."""

    loop: asyncio.AbstractEventLoop
    peer: str
    peer_initial_window: int

    def credit(self, stream: Stream) -> None:
        """Open the stream's receive window again (WINDOW_UPDATE) for what was consumed."""

    def flush_stream(self, stream: Stream, head: bytes = b"") -> None:
        """Write the stream's pending DATA and trailers as far as the windows allow."""


class AbortError(Exception):
    """Raised by ``CallContext.abort``: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def status_number(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return number


class CallContext:
    """The part of ``grpc.aio.ServicerContext`` our servicers and grpc_health use."""

    __slots__ = ("_code", "_details", "_headers", "_stream")

    def __init__(self, headers: Sequence[tuple[str, str]], stream: Stream) -> None:
        self._headers = headers
        self._stream = stream
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in self._headers if not k.startswith(":"))

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise AbortError(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def cancelled(self) -> bool:
        return self._stream.cancelled

    def done(self) -> bool:
        return self._stream.closed

    def peer(self) -> str:
        return self._stream.conn.peer

    async def write(self, message: Any) -> None:
        """Server-streaming writes, as ``grpc.aio`` offers them beside async generators."""
        self._stream.send_response(message)

    async def read(self) -> Any:
        return await self._stream.next_request()


class Stream:
    __slots__ = (
        "buffer",
        "cancelled",
        "closed",
        "conn",
        "handler",
        "headers",
        "headers_sent",
        "id",
        "pending",
        "pending_trailers",
        "remote_closed",
        "requests",
        "task",
        "unacked",
        "waiter",
        "window",
    )

    def __init__(
        self,
        stream_id: int,
        conn: StreamOwner,
        handler: grpc.RpcMethodHandler,
        headers: Sequence[tuple[str, str]],
    ) -> None:
        self.id = stream_id
        self.conn = conn
        self.handler = handler
        self.headers = headers
        self.window = conn.peer_initial_window
        self.buffer = bytearray()  # gRPC length-prefixed messages, possibly partial
        self.requests: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.remote_closed = False
        self.closed = False
        self.cancelled = False
        self.headers_sent = False
        self.pending = bytearray()  # DATA waiting for flow-control window
        self.pending_trailers: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        self.unacked = 0  # bytes received since our last WINDOW_UPDATE for this stream

    # -- receiving
    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_request(self) -> bytes | None:
        while not self.requests:
            if self.remote_closed or self.closed:
                return None
            self.waiter = self.conn.loop.create_future()
            await self.waiter
            self.waiter = None
        raw = self.requests.popleft()
        if not self.requests and self.unacked:
            self.conn.credit(self)
        return raw

    # -- sending
    def send_response(self, response: Any, trailers: bytes | None = None) -> None:
        """A response as the handler returned it, serialized as the method registered."""
        serialize = self.handler.response_serializer
        self.send_message(serialize(response) if serialize else response, trailers)

    def send_message(self, payload: bytes, trailers: bytes | None = None) -> None:
        """One response message (and, for a unary call, the trailers): one write when the
        flow-control windows allow, which they nearly always do."""
        if self.closed:
            return
        head = b""
        if not self.headers_sent:
            self.headers_sent = True
            head = frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS)
        self.pending += b"\x00" + len(payload).to_bytes(4, "big")
        self.pending += payload
        if trailers is not None:
            self.pending_trailers = trailers
        self.conn.flush_stream(self, head)

    def finish(self, trailers: bytes) -> None:
        """Trailers (or a trailers-only answer) end the stream once queued DATA has gone."""
        if self.closed:
            return
        if not self.headers_sent:
            self.headers_sent = True
            self.pending_trailers = RESPONSE_HEADERS + trailers  # trailers-only response
        else:
            self.pending_trailers = trailers
        self.conn.flush_stream(self)


class RequestIterator:
    __slots__ = ("_deserialize", "_stream")

    def __init__(self, stream: Stream, deserialize: Callable[[bytes], Any] | None) -> None:
        self._stream = stream
        self._deserialize = deserialize

    def __aiter__(self) -> RequestIterator:
        return self

    async def __anext__(self) -> Any:
        stream = self._stream
        raw = await stream.next_request()
        if raw is None:
            raise StopAsyncIteration
        if self._deserialize is None:
            return raw
        try:
            return self._deserialize(raw)
        except Exception as exc:
            raise AbortError(grpc.StatusCode.INTERNAL, "could not parse a request message") from exc
