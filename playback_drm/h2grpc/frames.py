"""HTTP/2 framing for the lean gRPC server: frame types, flags, error codes and settings
(RFC 9113), frame encoding, the constant HPACK blocks of our responses, and HPACK decoding of
request headers with a memo of whole blocks (RFC 7541).

Pure: no sockets, no asyncio. ``connection`` parses and writes frames with these.
"""

from __future__ import annotations

import struct

from hpack import Decoder

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

U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")


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
