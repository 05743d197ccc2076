"""Random frame sequences into one `H2Connection`: it never raises and never leaks a session.

The connection is driven without a socket (a recording transport), so hypothesis can try many
sequences quickly: HEADERS/CONTINUATION/DATA/RST_STREAM/WINDOW_UPDATE/SETTINGS/PING/GOAWAY/
PRIORITY/unknown frames with random flags, stream ids and payloads, cut into random chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.transport.h2 import frames as h2
from extproc.transport.h2.connection import H2Connection
from extproc.transport.h2.server import H2Server

PATH = "/test.Echo/Stream"
UNARY = "/test.Echo/Unary"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True  # nothing may be written after our FIN

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # everything written is on the wire at once

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed


class Session:
    opened = 0
    closed = 0

    def __init__(self, metadata: dict[str, str]) -> None:
        Session.opened += 1
        self._closes = 0
        self.done = False

    def message(self, raw: bytes) -> bytes:
        if raw[:1] == b"!":
            raise RuntimeError("handler bug")
        self.done = raw[:1] == b"."
        return raw[::-1]

    def close(self) -> None:
        self._closes += 1
        assert self._closes == 1, "closed twice"
        Session.closed += 1


def unary(raw: bytes, metadata: dict[str, str]) -> bytes:
    if raw[:1] == b"!":
        raise ValueError("unary bug")
    return raw


Action = tuple[str, int, int, bytes]

#: Mostly well-formed traffic (so calls really open and run), with some garbage mixed in.
actions = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "open",
                "open",
                "open_split",
                "message",
                "message",
                "message",
                "end",
                "rst",
                "window",
                "ping",
                "settings",
                "garbage",
            ]
        ),
        st.sampled_from([1, 3, 5, 7, 1001]),
        st.integers(0, 255),
        st.binary(max_size=40),
    ),
    max_size=30,
)


def encode(sequence: list[Action]) -> bytes:
    """The actions as frames, header blocks from one encoder (as a real client's would be)."""
    encoder = Encoder()
    out = []
    last = 1
    for action, drawn, flags, data in sequence:
        # mostly: new streams get the next id and frames go to the stream opened last
        opening = action in ("open", "open_split")
        stream = drawn if flags & 0xC0 == 0xC0 else last + 2 if opening else last
        end = h2.END_STREAM if flags & 0x81 == 0x81 else 0
        if opening:
            last = stream
            path = (PATH, PATH, UNARY, "/nope")[flags >> 2 & 3]
            block = encoder.encode([(":method", "POST"), (":path", path), ("te", "trailers")])
            if action == "open":
                out.append(h2.frame(h2.HEADERS, h2.END_HEADERS | end, stream, block))
            else:
                out.append(h2.frame(h2.HEADERS, end, stream, block[:2]))
                out.append(h2.frame(h2.CONTINUATION, h2.END_HEADERS, stream, block[2:]))
        elif action == "message":
            payload = h2.grpc_message(data)
            if flags & h2.PADDED:
                payload = bytes((3,)) + payload + b"\0\0\0"
            out.append(h2.frame(h2.DATA, end | flags & h2.PADDED, stream, payload))
        elif action == "end":
            out.append(h2.frame(h2.DATA, h2.END_STREAM, stream))
        elif action == "rst":
            out.append(h2.rst_stream_frame(stream, h2.CANCEL))
        elif action == "window":
            out.append(h2.window_update_frame(stream if flags & 1 else 0, flags + 1))
        elif action == "ping":
            out.append(h2.frame(h2.PING, 0, 0, data[:8].ljust(8, b"p")))
        elif action == "settings":
            out.append(
                h2.settings_frame([(h2.INITIAL_WINDOW_SIZE, flags), (h2.MAX_FRAME_SIZE, 16_384)])
            )
        else:
            out.append(h2.frame(flags % 12, flags, stream, data))
    return b"".join(out)


@settings(max_examples=500, deadline=None)
@given(actions, st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_random_frames_never_raise_or_leak_sessions(
    sequence: list[Action], cuts: list[int]
) -> None:
    Session.opened = Session.closed = 0
    server = H2Server({PATH: Session}, {UNARY: unary}, max_message=1024)
    connection = H2Connection(server)
    transport = RecordingTransport()
    connection.connection_made(transport)
    data = h2.PREFACE + h2.settings_frame(()) + encode(sequence)
    position = 0
    index = 0
    while position < len(data) and not transport.closed:
        size = cuts[index % len(cuts)]
        connection.data_received(data[position : position + size])
        position += size
        index += 1
    connection.connection_lost(None)
    assert Session.closed == Session.opened
    assert server.in_flight == 0
    # What the server wrote is a well-formed frame sequence within the default frame size.
    written = bytearray(transport.written)
    parsed = h2.read_frames(written, h2.DEFAULT_MAX_FRAME)
    assert not written, "a partial frame was written"
    assert parsed[0][0] == h2.SETTINGS


class GonePeerTransport(RecordingTransport):
    """A socket whose peer has already gone: shutdown(SHUT_WR) fails with ENOTCONN."""

    def write_eof(self) -> None:
        raise OSError(107, "Transport endpoint is not connected")


def test_go_away_to_a_peer_that_is_gone_aborts_quietly() -> None:
    server = H2Server({PATH: Session}, {UNARY: unary}, max_message=1024)
    connection = H2Connection(server)
    transport = GonePeerTransport()
    connection.connection_made(transport)
    connection.data_received(h2.PREFACE + h2.settings_frame(()))
    connection.go_away()  # what server.stop does for every connection: must not raise
    assert transport.closed
