"""HTTP/2 framing (RFC 9113) and gRPC message framing, as far as a gRPC server needs them.

Pure functions and constants: the `h2_server` transport parses with `read_frames` and writes with
the `*_frame` builders. Header blocks are HPACK-decoded by the `hpack` package; the few header
blocks this server sends are encoded here without the dynamic table (literal, never indexed), so
no encoder state has to follow the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9

# Frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings identifiers
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

# Error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1

_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_GRPC_PREFIX = struct.Struct(">BI")


class ProtocolError(Exception):
    """A connection error: answer with GOAWAY carrying `code`, then close.

    `limit` names the transport limit (`H2Limits` field) the peer ran into, if any: the
    connection counts it. The message is ours (fixed text), never the peer's bytes.
    """

    def __init__(self, message: str, code: int = PROTOCOL_ERROR, limit: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.limit = limit


def calm(limit: str, message: str) -> ProtocolError:
    """The connection error for a peer over a rate or size limit: GOAWAY ENHANCE_YOUR_CALM."""
    return ProtocolError(message, ENHANCE_YOUR_CALM, limit)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return (
        bytes((length >> 16 & 0xFF, length >> 8 & 0xFF, length & 0xFF, kind, flags))
        + _U32.pack(stream_id & MAX_WINDOW)
        + payload
    )


def read_frames(
    buffer: bytearray, max_size: int, limit: int = 1 << 62
) -> list[tuple[int, int, int, bytes]]:
    """Take the complete frames (at most `limit`) off the front of `buffer`."""
    frames: list[tuple[int, int, int, bytes]] = []
    offset = 0
    end = len(buffer)
    while end - offset >= FRAME_HEADER and len(frames) < limit:
        length = buffer[offset] << 16 | buffer[offset + 1] << 8 | buffer[offset + 2]
        if length > max_size:
            raise ProtocolError(f"frame of {length} bytes over {max_size}", FRAME_SIZE_ERROR)
        stop = offset + FRAME_HEADER + length
        if stop > end:
            break
        kind = buffer[offset + 3]
        flags = buffer[offset + 4]
        stream_id = _U32.unpack_from(buffer, offset + 5)[0] & MAX_WINDOW
        frames.append((kind, flags, stream_id, bytes(buffer[offset + FRAME_HEADER : stop])))
        offset = stop
    if offset:
        del buffer[:offset]
    return frames


def strip_padding(flags: int, payload: bytes) -> bytes:
    """The payload of a DATA or HEADERS frame without its padding (PADDED flag)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def header_block(flags: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame (padding and priority removed)."""
    payload = strip_padding(flags, payload)
    if flags & PRIORITY_FLAG:
        if len(payload) < 5:
            raise ProtocolError("HEADERS priority block truncated")
        payload = payload[5:]
    return payload


def settings_frame(values: Iterable[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(key, value) for key, value in values))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise ProtocolError("SETTINGS length not a multiple of 6", FRAME_SIZE_ERROR)
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def parse_u32(payload: bytes, what: str) -> int:
    if len(payload) != 4:
        raise ProtocolError(f"{what} of {len(payload)} bytes", FRAME_SIZE_ERROR)
    return int(_U32.unpack(payload)[0] & MAX_WINDOW)


def rst_stream_frame(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + debug)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer representation (RFC 7541 §5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """An HPACK block of literal header fields that are never indexed (no Huffman)."""
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        out += b"\x10"  # literal never indexed, new name
        out += _integer(len(raw_name), 7, 0) + raw_name
        out += _integer(len(raw_value), 7, 0) + raw_value
    return bytes(out)


def grpc_message(payload: bytes) -> bytes:
    """A length-prefixed gRPC message (never compressed)."""
    return _GRPC_PREFIX.pack(0, len(payload)) + payload


def read_grpc_messages(buffer: bytearray, max_size: int) -> list[bytes]:
    """Take every complete length-prefixed message off the front of `buffer`."""
    messages: list[bytes] = []
    offset = 0
    end = len(buffer)
    while end - offset >= 5:
        compressed, length = _GRPC_PREFIX.unpack_from(buffer, offset)
        if compressed:
            raise GrpcError(UNIMPLEMENTED, "compressed messages are not supported")
        if length > max_size:
            raise GrpcError(RESOURCE_EXHAUSTED, f"message of {length} bytes over {max_size}")
        stop = offset + 5 + length
        if stop > end:
            break
        messages.append(bytes(buffer[offset + 5 : stop]))
        offset = stop
    if offset:
        del buffer[:offset]
    return messages


# gRPC status codes used by the transport
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14


class GrpcError(Exception):
    """Ends one call with a non-OK gRPC status (the connection stays up)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
