"""HTTP/2 clients for the lean gRPC server's conformance tests (tests/test_h2grpc.py).

Two clients, on purpose independent of the server's own framing code:

- ``RawH2`` writes exactly the bytes a test builds (protocol violations included) and parses what
  the server sends with hyperframe, which rejects malformed frames, and hpack.
- ``H2Peer`` drives python-hyper's ``h2`` state machine as the client: it checks every frame the
  server sends against the protocol (flow-control windows, frame sizes, stream states) and raises
  ``h2.exceptions.ProtocolError`` when the server breaks it.

Reads wait at most ``READ_TIMEOUT`` seconds: a guard against a hung test, never a timing check.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
from hpack import Decoder, Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_TIMEOUT = 10.0

# frame types and flags (RFC 9113 section 6), kept here so tests do not borrow the server's
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

Address = tuple[str, int] | str  # (host, port) or a unix socket path


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, built by hand so tests can write frames no library would."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def settings_payload(values: dict[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", key, value) for key, value in values.items())


def grpc_message(payload: bytes, *, compressed: bool = False) -> bytes:
    """A gRPC length-prefixed message (compressed flag, 4-byte length, bytes)."""
    return bytes((1 if compressed else 0,)) + struct.pack(">I", len(payload)) + payload


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a complete gRPC DATA body; raises if the body ends inside one."""
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 5:
            raise ValueError("truncated gRPC message prefix")
        length = struct.unpack_from(">I", data, offset + 1)[0]
        if len(data) - offset - 5 < length:
            raise ValueError("truncated gRPC message")
        out.append(data[offset + 5 : offset + 5 + length])
        offset += 5 + length
    return out


def grpc_request_headers(
    path: str,
    authority: str = "localhost",
    *,
    method: str = "POST",
    content_type: str = "application/grpc",
    extra: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", content_type),
        ("te", "trailers"),
        *extra,
    ]


async def _open(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(address, str):
        return await asyncio.open_unix_connection(address)
    return await asyncio.open_connection(*address)


@dataclass
class Received:
    """A frame from the server, with its header block decoded when it carries one."""

    frame: Frame
    headers: dict[str, str] | None = None


@dataclass
class Response:
    """What the server sent on one stream, in order."""

    frames: list[Received] = field(default_factory=list)

    @property
    def header_sets(self) -> list[dict[str, str]]:
        return [r.headers for r in self.frames if r.headers is not None]

    @property
    def trailers(self) -> dict[str, str]:
        return self.header_sets[-1]

    @property
    def data(self) -> bytes:
        return b"".join(bytes(r.frame.data) for r in self.frames if isinstance(r.frame, DataFrame))

    @property
    def messages(self) -> list[bytes]:
        return split_messages(self.data)

    @property
    def reset_code(self) -> int | None:
        for received in self.frames:
            if isinstance(received.frame, RstStreamFrame):
                return int(received.frame.error_code)
        return None


class RawH2:
    """A frame-level client: the test decides every byte that goes out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.server_settings: dict[int, int] = {}
        self.backlog: list[Received] = []  # read while looking for another stream's frames
        self._pings = 0

    @classmethod
    async def open(
        cls,
        address: Address,
        *,
        preface: bytes = PREFACE,
        settings: dict[int, int] | None = None,
    ) -> RawH2:
        """Connects and sends the preface and a SETTINGS frame (``settings=None``: none)."""
        reader, writer = await _open(address)
        client = cls(reader, writer)
        out = preface
        if settings is not None:
            out += frame(SETTINGS, 0, 0, settings_payload(settings))
        client.send(out)
        await client.drain()
        return client

    def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            await self.writer.wait_closed()

    def block(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """An HPACK header block from this connection's encoder (dynamic table in use)."""
        return self.encoder.encode(list(headers))

    def headers(
        self, stream_id: int, headers: Iterable[tuple[str, str]], *, end_stream: bool = False
    ) -> bytes:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream_id, self.block(headers))

    def request(self, stream_id: int, path: str, body: bytes) -> bytes:
        """A whole unary gRPC request: HEADERS, then one message in DATA with END_STREAM."""
        return self.headers(stream_id, grpc_request_headers(path)) + frame(
            DATA, END_STREAM, stream_id, grpc_message(body)
        )

    async def read_frame(self) -> Received | None:
        """The next frame, or None once the server has closed the connection."""
        if self.backlog:
            return self.backlog.pop(0)
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), READ_TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        parsed, length = Frame.parse_frame_header(memoryview(head))
        body = await asyncio.wait_for(self.reader.readexactly(length), READ_TIMEOUT)
        parsed.parse_body(memoryview(body))
        if isinstance(parsed, HeadersFrame):
            # the server never splits a block into CONTINUATION frames
            assert "END_HEADERS" in parsed.flags
            decoded = self.decoder.decode(bytes(parsed.data), raw=False)
            return Received(parsed, {str(k): str(v) for k, v in decoded})
        if isinstance(parsed, SettingsFrame) and "ACK" not in parsed.flags:
            self.server_settings.update(parsed.settings)
        return Received(parsed)

    async def read_until(self, done: Callable[[Received], bool]) -> list[Received]:
        """Frames up to and including the first one ``done`` accepts; fails at EOF."""
        out: list[Received] = []
        while True:
            received = await self.read_frame()
            if received is None:
                raise AssertionError(f"connection closed; frames so far: {out}")
            out.append(received)
            if done(received):
                return out

    async def read_to_eof(self) -> list[Received]:
        out: list[Received] = []
        while (received := await self.read_frame()) is not None:
            out.append(received)
        return out

    async def goaway(self) -> GoAwayFrame:
        """Reads to the end of the connection and returns the server's (last) GOAWAY."""
        frames = await self.read_to_eof()
        goaways = [r.frame for r in frames if isinstance(r.frame, GoAwayFrame)]
        assert goaways, f"no GOAWAY before the connection closed: {frames}"
        return goaways[-1]

    async def ping(self, payload: bytes | None = None) -> list[Received]:
        """A PING round trip: every frame the server sent before answering it.

        The server handles frames in order, so what it meant to send before it read the PING is
        in the returned list: a barrier instead of a sleep."""
        if payload is None:
            self._pings += 1
            payload = struct.pack(">Q", self._pings)
        self.send(frame(PING, 0, 0, payload))
        await self.drain()
        return await self.read_until(
            lambda r: (
                isinstance(r.frame, PingFrame)
                and "ACK" in r.frame.flags
                and r.frame.opaque_data == payload
            )
        )

    async def response(self, stream_id: int) -> Response:
        """Frames of one stream until it ends (END_STREAM or RST_STREAM); frames of other
        streams and of the connection stay queued for later reads."""
        result = Response()
        others: list[Received] = []
        while True:
            received = await self.read_frame()
            if received is None:
                raise AssertionError(f"connection closed; stream {stream_id} got {result}")
            f = received.frame
            if f.stream_id != stream_id:
                others.append(received)
                continue
            result.frames.append(received)
            if isinstance(f, RstStreamFrame) or "END_STREAM" in f.flags:
                self.backlog[:0] = others
                return result


class H2Peer:
    """python-hyper's h2 as the client; also logs every raw frame the server sent."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h2.connection.H2Connection,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.frames: list[Frame] = []
        self._raw = bytearray()
        self._events: list[h2.events.Event] = []

    @classmethod
    async def open(cls, address: Address, *, settings: dict[int, int] | None = None) -> H2Peer:
        """``settings`` apply from the first SETTINGS frame on (h2 enforces them inbound)."""
        reader, writer = await _open(address)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        if settings:
            conn.local_settings = h2.settings.Settings(
                client=True,
                initial_values={h2.settings.SettingCodes(k): v for k, v in settings.items()},
            )
            conn.max_inbound_frame_size = conn.local_settings.max_frame_size
        conn.initiate_connection()
        peer = cls(reader, writer, conn)
        await peer.flush()
        return peer

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            await self.writer.wait_closed()

    def _log_frames(self, data: bytes) -> None:
        raw = self._raw
        raw += data
        while len(raw) >= 9:
            parsed, length = Frame.parse_frame_header(memoryview(bytes(raw[:9])))
            if len(raw) < 9 + length:
                return
            parsed.parse_body(memoryview(bytes(raw[9 : 9 + length])))
            self.frames.append(parsed)
            del raw[: 9 + length]

    async def next_event(self) -> h2.events.Event | None:
        """The next h2 event, reading as needed; None once the server has closed."""
        while not self._events:
            data = await asyncio.wait_for(self.reader.read(65_536), READ_TIMEOUT)
            if not data:
                return None
            self._log_frames(data)
            self._events.extend(self.conn.receive_data(data))
            await self.flush()  # SETTINGS ACKs and PING answers h2 queues on its own
        return self._events.pop(0)

    async def events_until(self, done: Callable[[h2.events.Event], bool]) -> list[h2.events.Event]:
        out: list[h2.events.Event] = []
        while True:
            event = await self.next_event()
            if event is None:
                raise AssertionError(f"connection closed; events so far: {out}")
            out.append(event)
            if done(event):
                return out

    async def ping(self, payload: bytes = b"barrier!") -> list[h2.events.Event]:
        """Events up to the server's answer to a PING: a barrier instead of a sleep."""
        self.conn.ping(payload)
        await self.flush()
        return await self.events_until(
            lambda e: isinstance(e, h2.events.PingAckReceived) and e.ping_data == payload
        )

    async def start_unary(self, path: str, body: bytes) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, grpc_request_headers(path))
        self.conn.send_data(stream_id, grpc_message(body), end_stream=True)
        await self.flush()
        return stream_id


def data_events(events: Iterable[h2.events.Event], stream_id: int) -> list[h2.events.DataReceived]:
    return [e for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id]
