"""A lean gRPC server over HTTP/2 on the asyncio event loop, for Envoy's side-channel calls.

Why: grpcio's server (``grpc.aio``) hands every call across three threads (the C core's event
engine, the completion-queue poller, the event loop), which costs about 350 µs of CPU per unary
call on this kind of machine even when the handler does nothing (``bench/transport.py``). ext_authz
is asked once per viewer request, so that floor alone was over the 250 µs budget. This server
parses HTTP/2 frames in the event loop's thread: one wake-up, one read and one write per call.

It is a drop-in for the part of ``grpc.aio.Server`` the generated ``add_*Servicer_to_server``
functions use, so the servicers, their message types (xds-protos, upb) and their tests are the same
under either transport; ``grpc.aio`` stays selectable (``GRPC_TRANSPORT=grpcio``).

Scope, on purpose: cleartext HTTP/2 with prior knowledge (Envoy's ``http2_protocol_options``
clusters; pod-local or loopback), identity encoding only, the four call shapes. Not done: TLS,
compression, server push, priorities (ignored, as RFC 9113 allows), deadlines (Envoy cancels a call
it gave up on with RST_STREAM, which cancels the handler). Flow control is complete both ways.
Anything outside the protocol gets GOAWAY and a closed connection, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn, cast

import grpc
from hpack import Decoder
from hpack.exceptions import HPACKError

from playback_drm.settings import ConfigError

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 section 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
# settings
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
# what we accept: large frames and windows so a 1 MB manifest needs few frames and no waiting
OUR_MAX_FRAME = 1 << 20
OUR_STREAM_WINDOW = 8 << 20
OUR_CONN_WINDOW = 64 << 20
OUR_MAX_HEADER_LIST = 64 << 10

_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return (
        length.to_bytes(3, "big")
        + bytes((kind, flags))
        + (stream_id & MAX_WINDOW).to_bytes(4, "big")
        + payload
    )


# ------------------------------------------------------------------ HPACK, the encoding side
# Responses use only the static table and literals without indexing, so there is no encoder state
# to keep in step with the peer; every block below is computed once.


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name (RFC 7541 section 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # static table index 8
RESPONSE_HEADERS = _STATUS_200 + _literal(b"content-type", b"application/grpc")


def trailers_block(code: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encode(message[:1024]))
    return block


def _percent_encode(message: str) -> bytes:
    """gRPC's grpc-message encoding: printable ASCII except '%' as is, the rest %XX of UTF-8."""
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


TRAILERS_OK = trailers_block(0)


class HeaderDecoder:
    """HPACK decoding with a memo of whole header blocks.

    Envoy sends the same block for every call of a method: indexed fields and a never-indexed
    ``:path``. A block that left the dynamic table unchanged decodes the same way for as long as
    the table stays unchanged, so it is decoded once (pure-Python HPACK with Huffman was the
    largest cost of a call). Any table change (an insertion, a size update) starts a new
    generation, and memo entries of older generations are not used.
    """

    MEMO_ENTRIES = 64

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = Decoder()
        self._decoder.max_allowed_table_size = 4096
        self._decoder.max_header_list_size = max_header_list_size
        self._table = self._decoder.header_table
        self.generation = 0
        self._memo: dict[bytes, tuple[int, list[tuple[str, str]]]] = {}
        add = self._table.add

        def counting_add(name: bytes, value: bytes) -> None:
            self.generation += 1
            add(name, value)

        self._table.add = counting_add  # type: ignore[method-assign]

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The header list (shared between calls: read it, never change it)."""
        hit = self._memo.get(block)
        if hit is not None and hit[0] == self.generation:
            return hit[1]
        table = self._table
        generation, size, entries = self.generation, table.maxsize, len(table.dynamic_entries)
        headers: list[tuple[str, str]] = self._decoder.decode(block, raw=False)  # type: ignore[assignment]
        # size updates down and back up in one block evict entries without an insertion
        if (
            self.generation == generation
            and table.maxsize == size
            and len(table.dynamic_entries) == entries
        ):
            if len(self._memo) >= self.MEMO_ENTRIES:
                self._memo.clear()
            self._memo[block] = (generation, headers)
        else:
            self.generation += 1  # a size update changes what indices mean, too
        return headers


class AbortError(Exception):
    """Raised by ``CallContext.abort``: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _status_number(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return number


class CallContext:
    """The part of ``grpc.aio.ServicerContext`` our servicers and grpc_health use."""

    __slots__ = ("_code", "_details", "_headers", "_stream")

    def __init__(self, headers: Sequence[tuple[str, str]], stream: _Stream) -> None:
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


class _Stream:
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
        conn: _Connection,
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


class _Connection(asyncio.Protocol):
    def __init__(self, server: LeanGrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface_ok = False
        self.decoder = HeaderDecoder(OUR_MAX_HEADER_LIST)
        self.streams: dict[int, _Stream] = {}
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
        self.blocked: dict[int, _Stream] = {}  # streams with DATA waiting for window
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
            _SETTING.pack(k, v)
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
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(OUR_CONN_WINDOW - DEFAULT_WINDOW))
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
                stream_id = _U32.unpack_from(buffer, offset + 5)[0] & MAX_WINDOW
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
            key, value = _SETTING.unpack_from(payload, index)
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
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
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
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
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
        stream = _Stream(stream_id, self, handler or _UNIMPLEMENTED, headers)
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
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.recv_unacked)))
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

    def credit(self, stream: _Stream) -> None:
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
            self._write(frame(WINDOW_UPDATE, 0, stream.id, _U32.pack(stream.unacked)))
            stream.unacked = 0

    def _take_messages(self, stream: _Stream, payload: bytes) -> bool:
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

    def _remote_end(self, stream: _Stream) -> None:
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
    async def _run(self, stream: _Stream) -> None:
        handler = stream.handler
        context = CallContext(stream.headers, stream)
        try:
            deserialize = handler.request_deserializer
            if handler.request_streaming:
                requests: Any = _RequestIterator(stream, deserialize)
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
                stream.finish(trailers_block(_status_number(context._code), context._details))
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

    def _trailers_only(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        """Ends the call with this status, after any DATA already queued (a message cut short
        would be a framing error at the client, not this status)."""
        if stream.closed:
            return
        stream.finish(trailers_block(_status_number(code), details))
        task = stream.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            # the call ended outside the handler (a bad request message): stop the handler too
            stream.cancelled = True
            task.cancel()

    # ---------------------------------------------------------------- frames out
    def flush_stream(self, stream: _Stream, head: bytes = b"") -> None:
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

    def _done(self, stream: _Stream) -> None:
        """Our side ended; if the client's side has not, it will not matter: forget it."""
        if not stream.remote_closed:
            # the call is over; tell the client to stop sending (RFC 9113 section 8.1)
            self._write(frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))
            self.reset_ids.append(stream.id)
        self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        stream.closed = True
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        stream.wake()
        if self.going_away and not self.streams:
            self._close()

    def _cancel(self, stream: _Stream) -> None:
        stream.cancelled = True
        stream.closed = True
        task = stream.task
        if task is not None and not task.done():
            task.cancel()
        stream.wake()

    def _reset(self, stream: _Stream, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
        self.reset_ids.append(stream.id)
        self._cancel(stream)
        self._forget(stream)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _abort_connection(self, code: int, reason: str) -> None:
        log.warning("closing a gRPC connection from %s: %s", self.peer, reason)
        self._write(frame(GOAWAY, 0, 0, _U32.pack(self.last_stream_id) + _U32.pack(code)))
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def go_away(self) -> None:
        """Graceful: no new streams; the open ones finish; then the connection closes."""
        if self.going_away:
            return
        self.going_away = True
        self._write(frame(GOAWAY, 0, 0, _U32.pack(self.last_stream_id) + _U32.pack(NO_ERROR)))
        if not self.streams:
            self._close()


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _RequestIterator:
    __slots__ = ("_deserialize", "_stream")

    def __init__(self, stream: _Stream, deserialize: Callable[[bytes], Any] | None) -> None:
        self._stream = stream
        self._deserialize = deserialize

    def __aiter__(self) -> _RequestIterator:
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


def _method_name(headers: Iterable[tuple[str, str]]) -> str:
    for name, value in headers:
        if name == ":path":
            return value
    return ""


_UNIMPLEMENTED = grpc.unary_unary_rpc_method_handler(lambda request, context: None)


class LeanGrpcServer:
    """The subset of ``grpc.aio.Server`` that generated registration code and our services use."""

    def __init__(
        self, *, max_message_bytes: int = 4 << 20, max_concurrent_streams: int = 1024
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_streams = max_concurrent_streams
        self.connections: set[_Connection] = set()
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.Server] = []
        self._stopped = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()

    # -- registration, as the generated add_*Servicer_to_server functions call it
    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def handler_for(self, path: str) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(path)
        if handler is not None:
            return handler
        for generic in self._generic:
            found = generic.service(_CallDetails(path))
            if found is not None:
                self._methods[path] = found
                return found
        return None

    # -- lifecycle
    def add_insecure_port(self, address: str) -> int:
        """``host:port`` (port 0 picks one; the bound port is returned) or ``unix:/path``."""
        if address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(address[len("unix:") :])
            port = 0
        else:
            host, _, port_text = address.rpartition(":")
            host = host.strip("[]") or "0.0.0.0"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port_text)))
            port = sock.getsockname()[1]
        sock.setblocking(False)
        self._sockets.append(sock)
        return int(port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._servers.append(
                await loop.create_server(lambda: _Connection(self), sock=sock, backlog=1024)
            )

    async def stop(self, grace: float | None) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.go_away()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), grace)
        for conn in list(self.connections):
            for stream in list(conn.streams.values()):
                conn._cancel(stream)
            conn._close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)
        self._servers.clear()
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """As ``grpc.aio``: True if the wait timed out, False once the server has stopped."""
        if self._stopped.is_set():
            return False
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return True
        return False


class _CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[tuple[str, str], ...] = ()


# ------------------------------------------------------------------ choosing the transport

TRANSPORTS = ("lean", "grpcio")


def check_transport(value: str) -> str:
    """``GRPC_TRANSPORT``: ``lean`` (this module, the default) or ``grpcio`` (``grpc.aio``)."""
    choice = value.strip().lower()
    if choice not in TRANSPORTS:
        raise ConfigError(f"GRPC_TRANSPORT must be one of {', '.join(TRANSPORTS)}, got {value!r}")
    return choice


def make_server(transport: str, *, max_receive_bytes: int, max_send_bytes: int) -> Any:
    """A server with grpc.aio's registration and lifecycle methods, on the chosen transport."""
    if transport == "lean":
        return LeanGrpcServer(max_message_bytes=max_receive_bytes)
    return grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", 1024),
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", max_send_bytes),
        ]
    )
