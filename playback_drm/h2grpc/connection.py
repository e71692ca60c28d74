"""One HTTP/2 connection from Envoy: reading and validating frames, connection-level settings
and flow control, opening streams and running their handlers, GOAWAY and RST_STREAM.

Anything outside the protocol gets GOAWAY and a closed connection, never a crash. The server side
is reached through :class:`Dispatcher`, so this module does not import ``server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol, cast

import grpc
from hpack.exceptions import HPACKError

from playback_drm.h2grpc.calls import (
    AbortError,
    CallContext,
    RequestIterator,
    Stream,
    status_number,
)
from playback_drm.h2grpc.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    OUR_CONN_WINDOW,
    OUR_MAX_FRAME,
    OUR_MAX_HEADER_LIST,
    OUR_STREAM_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTING,
    SETTINGS,
    STREAM_CLOSED,
    TRAILERS_OK,
    U32,
    WINDOW_UPDATE,
    HeaderDecoder,
    frame,
    trailers_block,
)

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """What a connection needs from its server: limits, method lookup, the set of open
    connections (a stopping server drains them)."""

    max_message_bytes: int
    max_concurrent_streams: int
    connections: set[Connection]
    drained: asyncio.Event

    def handler_for(self, path: str) -> grpc.RpcMethodHandler | None:
        """The handler registered for a ``:path``, or None."""


class Connection(asyncio.Protocol):
    def __init__(self, server: Dispatcher) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface_ok = False
        self.decoder = HeaderDecoder(OUR_MAX_HEADER_LIST)
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.send_window = DEFAULT_WINDOW
        self.recv_window = OUR_CONN_WINDOW
        self.recv_unacked = 0
        self.header_block: bytearray | None = None
        self.header_stream = 0
        self.header_flags = 0
        self.going_away = False
        self.blocked: dict[int, Stream] = {}  # streams with DATA waiting for window
        self.reset_ids: deque[int] = deque(maxlen=128)  # streams we reset, most recent last
        self.peer = ""

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport = self.transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # as grpc.aio spells it
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            self.peer = f"{'ipv6' if ':' in peer[0] else 'ipv4'}:{host}:{peer[1]}"
        else:
            self.peer = f"unix:{peer or ''}"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = b"".join(
            SETTING.pack(k, v)
            for k, v in (
                (S_MAX_CONCURRENT_STREAMS, self.server.max_concurrent_streams),
                (S_INITIAL_WINDOW_SIZE, OUR_STREAM_WINDOW),
                (S_MAX_FRAME_SIZE, OUR_MAX_FRAME),
                (S_MAX_HEADER_LIST_SIZE, OUR_MAX_HEADER_LIST),
                (S_ENABLE_PUSH, 0),
            )
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(OUR_CONN_WINDOW - DEFAULT_WINDOW))
        )
        self.server.connections.add(self)
        self.server.drained.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if not self.server.connections:
            self.server.drained.set()
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.streams.clear()
        self.blocked.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.preface_ok:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._abort_connection(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self._abort_connection(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            self.preface_ok = True
            del buffer[: len(PREFACE)]
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= 9:
                length = int.from_bytes(buffer[offset : offset + 3], "big")
                if length > OUR_MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "frame larger than SETTINGS allow")
                if end - offset < 9 + length:
                    break
                kind = buffer[offset + 3]
                flags = buffer[offset + 4]
                stream_id = U32.unpack_from(buffer, offset + 5)[0] & MAX_WINDOW
                payload = bytes(buffer[offset + 9 : offset + 9 + length])
                offset += 9 + length
                self._frame(kind, flags, stream_id, payload)
                if self.transport is None or self.transport.is_closing():
                    return
        except _ConnectionError as exc:
            self._abort_connection(exc.code, exc.reason)
            return
        except HPACKError:
            self._abort_connection(COMPRESSION_ERROR, "bad header block")
            return
        del buffer[:offset]

    # ---------------------------------------------------------------- frames in
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_block is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self.header_block is None or stream_id != self.header_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.header_block += payload
            if len(self.header_block) > OUR_MAX_HEADER_LIST * 2:
                raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                block = bytes(self.header_block)
                self.header_block = None
                self._headers_complete(self.header_stream, self.header_flags, block)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0 or len(payload) != 8:
                raise _ConnectionError(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR, "PING")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM")
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._cancel(stream)
                self._forget(stream)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams:
                self._close()
        elif kind == PRIORITY:
            if stream_id == 0 or len(payload) != 5:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY")
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients do not push")
        # unknown frame types are ignored (RFC 9113 section 4.1)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length")
        for index in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, index)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.window += delta
                    if stream.window > MAX_WINDOW:  # RFC 9113 section 6.9.2
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "a stream window overflowed")
            elif key == S_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 16_777_215:
                    raise _ConnectionError(PROTOCOL_ERROR, "max frame size out of range")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH")
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = U32.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream we already finished: allowed, ignored
        if increment == 0 or stream.window + increment > MAX_WINDOW:
            self._reset(stream, PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR)
            return
        stream.window += increment
        self.flush_stream(stream)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ConnectionError(PROTOCOL_ERROR, "padding")
            stop -= payload[0]
            start = 1
        if flags & PRIORITY_FLAG:
            start += 5
        if stop < start:
            raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
        block = payload[start:stop]
        if flags & END_HEADERS:
            self._headers_complete(stream_id, flags, block)
        else:
            self.header_block = bytearray(block)
            self.header_stream = stream_id
            self.header_flags = flags

    def _headers_complete(self, stream_id: int, flags: int, block: bytes) -> None:
        # decoded even when the stream is refused: the dynamic table must stay in step
        headers = self.decoder.decode(block)
        existing = self.streams.get(stream_id)
        if existing is not None:
            if existing.remote_closed:  # half-closed (remote): RFC 9113 section 5.1
                self._reset(existing, STREAM_CLOSED)
                return
            # trailers from the client: only as the end of its side
            if not flags & END_STREAM:
                raise _ConnectionError(PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            self._remote_end(existing)
            return
        if stream_id in self.reset_ids:
            return  # a stream we reset: its frames in flight (client trailers) are ignored
        if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "stream id not new and odd")
        self.last_stream_id = stream_id
        if self.going_away or len(self.streams) >= self.server.max_concurrent_streams:
            self._write(frame(RST_STREAM, 0, stream_id, U32.pack(REFUSED_STREAM)))
            return
        path = ""
        method = ""
        content_type = ""
        for name, value in headers:
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
            elif name == "content-type":
                content_type = value
        handler = self.server.handler_for(path)
        stream = Stream(stream_id, self, handler or _UNIMPLEMENTED, headers)
        self.streams[stream_id] = stream
        # known before any early answer below, which must not reset a stream the client ended
        stream.remote_closed = bool(flags & END_STREAM)
        if method != "POST" or not content_type.startswith("application/grpc"):
            self._trailers_only(stream, grpc.StatusCode.INTERNAL, "expected a gRPC POST")
        elif handler is None:
            self._trailers_only(stream, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
        elif handler.request_streaming:
            stream.task = self.loop.create_task(self._run(stream))
        if flags & END_STREAM:
            self._remote_end(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window exceeded")
        self.recv_unacked += size
        if self.recv_unacked >= OUR_CONN_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_unacked)))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we ended (and reset): frames in flight are ignored
        if stream.remote_closed:
            self._reset(stream, STREAM_CLOSED)
            return
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise _ConnectionError(PROTOCOL_ERROR, "padding")
            payload = payload[1 : size - payload[0]]
        stream.unacked += size
        if stream.unacked > OUR_STREAM_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if flags & END_STREAM:
            stream.remote_closed = True  # before an early answer: no RST_STREAM after it
        if not stream.closed and not self._take_messages(stream, payload):
            return
        if flags & END_STREAM:
            self._remote_end(stream)
        else:
            self.credit(stream)

    def credit(self, stream: Stream) -> None:
        """Stream-level flow control with backpressure: credit goes back only while no complete
        message waits for the handler, so a peer cannot queue more than a window of messages
        ahead of a slow handler (a partial message always gets credit, or a message larger
        than the window could never complete)."""
        if (
            stream.unacked >= OUR_STREAM_WINDOW // 2
            and not stream.requests
            and not stream.remote_closed
            and not stream.closed
        ):
            self._write(frame(WINDOW_UPDATE, 0, stream.id, U32.pack(stream.unacked)))
            stream.unacked = 0

    def _take_messages(self, stream: Stream, payload: bytes) -> bool:
        buffer = stream.buffer
        buffer += payload
        limit = self.server.max_message_bytes
        got = False
        while len(buffer) >= 5:
            length = int.from_bytes(buffer[1:5], "big")
            if buffer[0] != 0:
                self._trailers_only(
                    stream, grpc.StatusCode.INTERNAL, "compressed messages are not accepted"
                )
                return False
            if length > limit:
                self._trailers_only(
                    stream,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes over the {limit}-byte limit",
                )
                return False
            if len(buffer) < 5 + length:
                break
            stream.requests.append(bytes(buffer[5 : 5 + length]))
            del buffer[: 5 + length]
            got = True
        if got and stream.handler.request_streaming:
            stream.wake()
        return True

    def _remote_end(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.closed:
            return
        if stream.buffer:
            self._trailers_only(stream, grpc.StatusCode.INTERNAL, "truncated message")
            return
        if stream.handler.request_streaming:
            stream.wake()
            return
        if len(stream.requests) != 1:
            self._trailers_only(
                stream, grpc.StatusCode.INTERNAL, "a unary call carries exactly one message"
            )
            return
        stream.task = self.loop.create_task(self._run(stream))

    # ---------------------------------------------------------------- calls
    async def _run(self, stream: Stream) -> None:
        handler = stream.handler
        context = CallContext(stream.headers, stream)
        try:
            deserialize = handler.request_deserializer
            if handler.request_streaming:
                requests: Any = RequestIterator(stream, deserialize)
            else:
                raw = stream.requests.popleft()
                try:
                    requests = deserialize(raw) if deserialize is not None else raw
                except Exception:
                    self._trailers_only(
                        stream, grpc.StatusCode.INTERNAL, "could not parse the request message"
                    )
                    return
            if handler.response_streaming:
                call = handler.stream_stream if handler.request_streaming else handler.unary_stream
                responses = call(requests, context)
                if responses is not None and hasattr(responses, "__aiter__"):
                    async for response in responses:
                        if stream.closed:
                            break
                        stream.send_response(response)
                elif isinstance(responses, Awaitable):
                    await responses  # writes went through context.write
            else:
                call = handler.stream_unary if handler.request_streaming else handler.unary_unary
                response = call(requests, context)
                if inspect.isawaitable(response):
                    response = await response
                if context._code in (None, grpc.StatusCode.OK):
                    stream.send_response(response, TRAILERS_OK)
                    return
            if context._code not in (None, grpc.StatusCode.OK):
                assert context._code is not None
                stream.finish(trailers_block(status_number(context._code), context._details))
            else:
                stream.finish(TRAILERS_OK)
        except AbortError as exc:
            self._trailers_only(stream, exc.code, exc.details)
        except asyncio.CancelledError:
            if not stream.cancelled:
                raise
        except Exception:
            log.exception("gRPC handler failed", extra={"method": _method_name(stream.headers)})
            self._trailers_only(stream, grpc.StatusCode.INTERNAL, "internal error")

    def _trailers_only(self, stream: Stream, code: grpc.StatusCode, details: str) -> None:
        """Ends the call with this status, after any DATA already queued (a message cut short
        would be a framing error at the client, not this status)."""
        if stream.closed:
            return
        stream.finish(trailers_block(status_number(code), details))
        task = stream.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            # the call ended outside the handler (a bad request message): stop the handler too
            stream.cancelled = True
            task.cancel()

    # ---------------------------------------------------------------- frames out
    def flush_stream(self, stream: Stream, head: bytes = b"") -> None:
        """Send what flow control allows, in one write; trailers go once the DATA before them
        has gone."""
        out = bytearray(head)
        pending = stream.pending
        allowed = min(self.send_window, stream.window, len(pending))
        if allowed > 0:
            max_frame = self.peer_max_frame
            sent = 0
            while sent < allowed:
                size = min(max_frame, allowed - sent)
                out += size.to_bytes(3, "big") + b"\x00\x00" + stream.id.to_bytes(4, "big")
                out += pending[sent : sent + size]
                sent += size
            del pending[:allowed]
            self.send_window -= allowed
            stream.window -= allowed
        ended = False
        if pending:
            self.blocked[stream.id] = stream
        else:
            self.blocked.pop(stream.id, None)
            if stream.pending_trailers is not None:
                out += frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.pending_trailers)
                stream.pending_trailers = None
                ended = True
        if out:
            self._write(bytes(out))
        if ended:
            self._done(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self.flush_stream(stream)

    def _done(self, stream: Stream) -> None:
        """Our side ended; if the client's side has not, it will not matter: forget it."""
        if not stream.remote_closed:
            # the call is over; tell the client to stop sending (RFC 9113 section 8.1)
            self._write(frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR)))
            self.reset_ids.append(stream.id)
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        stream.closed = True
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        stream.wake()
        if self.going_away and not self.streams:
            self._close()

    def _cancel(self, stream: Stream) -> None:
        stream.cancelled = True
        stream.closed = True
        task = stream.task
        if task is not None and not task.done():
            task.cancel()
        stream.wake()

    def _reset(self, stream: Stream, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream.id, U32.pack(code)))
        self.reset_ids.append(stream.id)
        self._cancel(stream)
        self._forget(stream)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _abort_connection(self, code: int, reason: str) -> None:
        log.warning("closing a gRPC connection from %s: %s", self.peer, reason)
        self._write(frame(GOAWAY, 0, 0, U32.pack(self.last_stream_id) + U32.pack(code)))
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def go_away(self) -> None:
        """Graceful: no new streams; the open ones finish; then the connection closes."""
        if self.going_away:
            return
        self.going_away = True
        self._write(frame(GOAWAY, 0, 0, U32.pack(self.last_stream_id) + U32.pack(NO_ERROR)))
        if not self.streams:
            self._close()


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _method_name(headers: Iterable[tuple[str, str]]) -> str:
    for name, value in headers:
        if name == ":path":
            return value
    return ""


_UNIMPLEMENTED = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
