"""HTTP/2 and gRPC framing helpers of the lean transport (`extproc.transport.h2.frames`)."""

from __future__ import annotations

import struct

import pytest
from hpack import Decoder
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.transport.h2 import frames as h2
from extproc.transport.h2.frames import GrpcError, ProtocolError

Frame = tuple[int, int, int, bytes]


def decoded(block: bytes) -> list[tuple[str, str]]:
    return [(name.decode(), value.decode()) for name, value in Decoder().decode(block, raw=True)]


# -- frames ----------------------------------------------------------------------------------


def test_frame_header_layout() -> None:
    raw = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 3, b"abc")
    assert raw == b"\x00\x00\x03\x01\x05\x00\x00\x00\x03abc"
    # the reserved bit of the stream id is never sent
    assert h2.frame(h2.DATA, 0, 0x8000_0001)[5:9] == b"\x00\x00\x00\x01"


def test_frames_round_trip_in_order() -> None:
    frames: list[Frame] = [
        (h2.SETTINGS, 0, 0, b""),
        (h2.HEADERS, h2.END_HEADERS, 1, b"\x82\x84"),
        (h2.DATA, h2.END_STREAM, 1, bytes(range(256)) * 3),
        (h2.PING, h2.ACK, 0, b"12345678"),
        (0xFF, 0xFF, h2.MAX_WINDOW, b"unknown type"),
    ]
    buffer = bytearray(b"".join(h2.frame(*f) for f in frames))
    assert h2.read_frames(buffer, h2.DEFAULT_MAX_FRAME) == frames
    assert buffer == b""


def test_partial_frames_stay_in_the_buffer() -> None:
    first = h2.frame(h2.DATA, 0, 1, b"complete")
    second = h2.frame(h2.DATA, h2.END_STREAM, 1, b"not yet complete")
    buffer = bytearray(first + second[:12])
    assert h2.read_frames(buffer, h2.DEFAULT_MAX_FRAME) == [(h2.DATA, 0, 1, b"complete")]
    assert buffer == second[:12]
    # a lone partial frame header: nothing taken, nothing lost
    header_only = bytearray(second[:5])
    assert h2.read_frames(header_only, h2.DEFAULT_MAX_FRAME) == []
    assert header_only == second[:5]
    buffer += second[12:]
    assert h2.read_frames(buffer, h2.DEFAULT_MAX_FRAME) == [
        (h2.DATA, h2.END_STREAM, 1, b"not yet complete")
    ]
    assert buffer == b""


def test_oversize_frame_is_a_frame_size_error() -> None:
    buffer = bytearray(h2.frame(h2.DATA, 0, 1, b"x" * 101))
    with pytest.raises(ProtocolError) as caught:
        h2.read_frames(buffer, 100)
    assert caught.value.code == h2.FRAME_SIZE_ERROR
    # exactly the limit is fine
    assert h2.read_frames(bytearray(h2.frame(h2.DATA, 0, 1, b"x" * 100)), 100)[0][3] == b"x" * 100


def test_oversize_frame_is_refused_from_its_header_alone() -> None:
    buffer = bytearray(h2.frame(h2.DATA, 0, 1, b"x" * 200)[:9])
    with pytest.raises(ProtocolError) as caught:
        h2.read_frames(buffer, 100)
    assert caught.value.code == h2.FRAME_SIZE_ERROR


# -- padding and priority --------------------------------------------------------------------


def test_unpadded_payload_is_returned_as_is() -> None:
    assert h2.strip_padding(h2.END_STREAM, b"\x03abc") == b"\x03abc"


def test_padding_is_stripped() -> None:
    assert h2.strip_padding(h2.PADDED, b"\x03data\x00\x00\x00") == b"data"
    assert h2.strip_padding(h2.PADDED | h2.END_STREAM, b"\x00data") == b"data"
    # all of the rest is padding
    assert h2.strip_padding(h2.PADDED, b"\x03abc") == b""


@pytest.mark.parametrize("payload", [b"", b"\x04abc", b"\x05abc", b"\xff"])
def test_padding_longer_than_the_frame_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        h2.strip_padding(h2.PADDED, payload)
    assert caught.value.code == h2.PROTOCOL_ERROR


def test_header_block_without_flags() -> None:
    assert h2.header_block(h2.END_HEADERS, b"\x82\x84") == b"\x82\x84"


def test_header_block_with_priority() -> None:
    priority = b"\x80\x00\x00\x03\x10"  # exclusive, depends on stream 3, weight 16
    assert h2.header_block(h2.PRIORITY_FLAG | h2.END_HEADERS, priority + b"\x82") == b"\x82"


def test_header_block_with_padding_and_priority() -> None:
    payload = b"\x02" + b"\x00\x00\x00\x00\x0f" + b"\x82\x84" + b"\x00\x00"
    assert h2.header_block(h2.PADDED | h2.PRIORITY_FLAG, payload) == b"\x82\x84"


def test_truncated_priority_block_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        h2.header_block(h2.PRIORITY_FLAG, b"\x00\x00\x00")


# -- settings, window updates, control frames ------------------------------------------------


def test_settings_build_and_parse() -> None:
    values = [(h2.INITIAL_WINDOW_SIZE, h2.MAX_WINDOW), (h2.MAX_FRAME_SIZE, 2**24 - 1)]
    raw = h2.settings_frame(values)
    [(kind, flags, stream_id, payload)] = h2.read_frames(bytearray(raw), h2.DEFAULT_MAX_FRAME)
    assert (kind, flags, stream_id, len(payload)) == (h2.SETTINGS, 0, 0, 12)
    assert payload[:6] == b"\x00\x04\x7f\xff\xff\xff"
    assert h2.parse_settings(payload) == values
    assert h2.parse_settings(b"") == []


@pytest.mark.parametrize("length", [1, 3, 5, 7, 9, 13])
def test_settings_of_bad_length_are_a_frame_size_error(length: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        h2.parse_settings(b"\x00" * length)
    assert caught.value.code == h2.FRAME_SIZE_ERROR


def test_window_update_rst_stream_goaway() -> None:
    assert h2.window_update_frame(5, 1000) == h2.frame(
        h2.WINDOW_UPDATE, 0, 5, struct.pack(">I", 1000)
    )
    assert h2.rst_stream_frame(7, h2.CANCEL) == h2.frame(h2.RST_STREAM, 0, 7, b"\x00\x00\x00\x08")
    goaway = h2.goaway_frame(9, h2.PROTOCOL_ERROR, b"why")
    assert h2.read_frames(bytearray(goaway), h2.DEFAULT_MAX_FRAME) == [
        (h2.GOAWAY, 0, 0, b"\x00\x00\x00\x09\x00\x00\x00\x01why")
    ]


def test_parse_u32() -> None:
    assert h2.parse_u32(b"\x00\x01\x00\x00", "WINDOW_UPDATE") == 65536
    # the reserved bit is ignored
    assert h2.parse_u32(b"\x80\x00\x00\x01", "WINDOW_UPDATE") == 1
    with pytest.raises(ProtocolError) as caught:
        h2.parse_u32(b"\x00\x00\x01", "WINDOW_UPDATE")
    assert caught.value.code == h2.FRAME_SIZE_ERROR


# -- HPACK -----------------------------------------------------------------------------------


def test_encode_headers_decodes_to_the_same_pairs() -> None:
    headers = [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "0"),
        ("empty", ""),
        ("x-long", "v" * 300),  # length 300: a multi-byte HPACK integer
        ("x-" + "n" * 200, "boundary" * 16),  # 128-byte value, 202-byte name
        ("x-utf8", "résumé ü"),
    ]
    block = h2.encode_headers(headers)
    assert decoded(block) == headers


@pytest.mark.parametrize("size", [0, 1, 126, 127, 128, 254, 255, 16_383, 16_384, 60_000])
def test_hpack_integer_boundaries(size: int) -> None:
    headers = [("x", "a" * size)]
    assert decoded(h2.encode_headers(headers)) == headers


def test_encoded_headers_are_never_indexed_literals() -> None:
    block = h2.encode_headers([("a", "b")])
    assert block == b"\x10\x01a\x01b"
    decoder = Decoder()
    decoder.decode(block)
    # nothing entered the decoder's dynamic table, so encoder and decoder state cannot drift
    assert len(decoder.header_table.dynamic_entries) == 0


# -- gRPC messages ---------------------------------------------------------------------------


def test_grpc_message_prefix() -> None:
    assert h2.grpc_message(b"hello") == b"\x00\x00\x00\x00\x05hello"
    assert h2.grpc_message(b"") == b"\x00\x00\x00\x00\x00"


def test_grpc_message_split_across_buffers() -> None:
    raw = h2.grpc_message(b"split message")
    buffer = bytearray()
    seen: list[bytes] = []
    for byte in raw:
        buffer.append(byte)
        seen += h2.read_grpc_messages(buffer, 1024)
        if len(seen) == 0:
            assert buffer == raw[: len(buffer)]
    assert seen == [b"split message"]
    assert buffer == b""


def test_several_grpc_messages_in_one_buffer() -> None:
    payloads = [b"one", b"", b"three" * 100]
    buffer = bytearray(b"".join(h2.grpc_message(p) for p in payloads) + b"\x00\x00\x00")
    assert h2.read_grpc_messages(buffer, 1024) == payloads
    assert buffer == b"\x00\x00\x00"  # the start of the next prefix stays


def test_compressed_message_is_unimplemented() -> None:
    buffer = bytearray(b"\x01\x00\x00\x00\x03abc")
    with pytest.raises(GrpcError) as caught:
        h2.read_grpc_messages(buffer, 1024)
    assert caught.value.status == h2.UNIMPLEMENTED


def test_message_over_the_limit_is_resource_exhausted() -> None:
    # refused from the prefix alone: the body need not arrive first
    buffer = bytearray(struct.pack(">BI", 0, 1025))
    with pytest.raises(GrpcError) as caught:
        h2.read_grpc_messages(buffer, 1024)
    assert caught.value.status == h2.RESOURCE_EXHAUSTED
    assert "1025" in caught.value.message
    assert h2.read_grpc_messages(bytearray(h2.grpc_message(b"x" * 1024)), 1024) == [b"x" * 1024]


# -- property ----------------------------------------------------------------------------------

frames_strategy = st.lists(
    st.tuples(
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, h2.MAX_WINDOW),
        st.binary(max_size=300),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(frames=frames_strategy, data=st.data())
def test_frames_survive_any_chunking(frames: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(h2.frame(*f) for f in frames)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=20)))
    buffer = bytearray()
    received: list[Frame] = []
    start = 0
    for stop in [*cuts, len(stream)]:
        buffer += stream[start:stop]
        start = stop
        received += h2.read_frames(buffer, h2.DEFAULT_MAX_FRAME)
        # what is left is the unconsumed tail of what was fed: no byte lost or reordered
        assert buffer == stream[start - len(buffer) : start]
    assert received == frames
    assert buffer == b""
