"""One HTTP/2 connection (`H2Connection`): frames in, gRPC calls dispatched, limits enforced.

Frames are parsed as they arrive and each complete gRPC message goes to its method's handler in
the same event-loop callback; the answer is written by `CallOutput` (output.py). Per connection
this bounds (see `H2Limits` for the defaults): concurrent streams, the receive windows (a stream
gets a `stream_window`, or its current message's size when larger; both refilled as data is
consumed), message size, header block size, the partial messages buffered (per connection and
for the server), and the rates of PING, SETTINGS, RST_STREAM, empty frames and CONTINUATION
(token buckets; over them: GOAWAY ENHANCE_YOUR_CALM). `tick` runs the timeouts.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from extproc.transport.h2 import frames as h2
from extproc.transport.h2.calls import UNKNOWN_METHOD, Call, Listener, Metadata
from extproc.transport.h2.frames import GrpcError, ProtocolError
from extproc.transport.h2.limits import TokenBucket
from extproc.transport.h2.output import CallOutput, logger

#: opaque data of the server's keep-alive PING
KEEPALIVE = b"cascade\x00"


class H2Connection(CallOutput):
    def __init__(self, server: Listener) -> None:
        super().__init__(server)
        limits = self.limits
        now = time.monotonic()
        self._in = bytearray()
        self._preface = False
        #: the client's first SETTINGS arrived
        self.handshaken = False
        self._decoder = Decoder()
        self._decoder.max_header_list_size = limits.max_header_block
        #: (stream id, flags, fragments) of a header block awaiting CONTINUATION frames
        self._continued: tuple[int, int, bytearray] | None = None
        #: DATA bytes the client may still send on the connection
        self._recv_window = limits.connection_window
        self.opened_at = self.last_received = self.idle_since = now
        self.ping_sent_at: float | None = None
        self._stall_mark = (0, 0)
        self._stall_since = now
        self._pings = TokenBucket(limits.ping_rate, limits.ping_burst, now)
        self._settings_bucket = TokenBucket(limits.settings_rate, limits.settings_burst, now)
        self._resets = TokenBucket(limits.reset_rate, limits.reset_burst, now)
        self._empty = TokenBucket(limits.empty_frame_rate, limits.empty_frame_burst, now)
        self._continuations = TokenBucket(limits.continuation_rate, limits.continuation_burst, now)
        self._now = now

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not a subclass of asyncio.Transport)
        self.transport = transport = cast(asyncio.Transport, transport)
        limits = self.limits
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        self.server.connection_opened(self)
        opening = h2.settings_frame(
            (
                (h2.ENABLE_PUSH, 0),
                (h2.MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
                (h2.INITIAL_WINDOW_SIZE, limits.stream_window),
                (h2.MAX_HEADER_LIST_SIZE, limits.max_header_block),
            )
        )
        if limits.connection_window > h2.DEFAULT_WINDOW:
            opening += h2.window_update_frame(0, limits.connection_window - h2.DEFAULT_WINDOW)
        transport.write(opening)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._now = self.last_received = time.monotonic()
        self.ping_sent_at = None
        self._in += data
        if not self._yielding:
            self._parse()

    def _parse(self) -> None:
        """Handle the buffered frames, at most `frames_per_turn`: then let the loop serve the
        other connections (reading paused) and go on in a later callback."""
        buffer = self._in
        limit = self.limits.frames_per_turn
        try:
            if not self._preface:
                if len(buffer) < len(h2.PREFACE):
                    if not h2.PREFACE.startswith(bytes(buffer)):
                        raise ProtocolError("not an HTTP/2 connection preface")
                    return
                if not buffer.startswith(h2.PREFACE):
                    raise ProtocolError("not an HTTP/2 connection preface")
                del buffer[: len(h2.PREFACE)]
                self._preface = True
            frames = h2.read_frames(buffer, h2.DEFAULT_MAX_FRAME, limit)
            for kind, flags, stream_id, payload in frames:
                if self.is_closed():  # a frame before closed the connection
                    return
                self._frame(kind, flags, stream_id, payload)
        except ProtocolError as exc:
            self.fail(exc)
            return
        if not buffer:  # a bytearray emptied from the front keeps its memory: let it go
            self._in = bytearray()
        elif len(frames) >= limit and self.transport is not None:
            self._yielding = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._next_turn)
        self.flush()

    def _next_turn(self) -> None:
        self._yielding = False
        if self._closed:
            return
        self._now = time.monotonic()
        self._parse()
        if not self._yielding and not self._write_paused and not self._closed:
            assert self.transport is not None
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connection_closed(self)
        for call in list(self._calls.values()):
            self.drop(call)
        self.server.idle_changed()

    # -- lifecycle -------------------------------------------------------------------------------

    def go_away(self) -> None:
        """Refuse new streams (shutdown, idle); the open ones finish."""
        if self._going_away or self._closed:
            return
        self._going_away = True
        self._out.append(h2.goaway_frame(self._last_stream, h2.NO_ERROR))
        self.flush()
        self.close_if_idle()

    def abort(self) -> None:
        if self.transport is not None:
            self._closed = True
            self.closed_at = time.monotonic()
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return not self._calls

    def became_idle(self) -> None:
        self.idle_since = self._now
        self.server.idle_changed()

    def tick(self, now: float) -> None:
        """The timeouts: handshake, idle, keep-alive, send stall; a close that does not end."""
        limits = self.limits
        self._now = now
        if self._closed:
            if self.transport is not None and now - self.closed_at > 1.0:
                self.transport.abort()
            return
        if not self.handshaken:
            if now - self.opened_at > limits.handshake_timeout:
                self.stats.hit("handshake_timeout")
                self.close_now()
            return
        if not self._calls and now - self.idle_since > limits.idle_timeout:
            self.stats.hit("idle_timeout")
            self.go_away()
            return
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at > limits.keepalive_timeout:
                self.fail(ProtocolError("no keep-alive answer", h2.NO_ERROR, "keepalive_timeout"))
                return
        elif now - self.last_received > limits.keepalive_interval:
            self.ping_sent_at = now
            self._out.append(h2.frame(h2.PING, 0, 0, KEEPALIVE))
            self.flush()
        mark = (self.sent_bytes, self.resumes)
        if not self.output_blocked or mark != self._stall_mark:
            self._stall_mark = mark
            self._stall_since = now
        elif now - self._stall_since > limits.send_timeout:
            self.fail(h2.calm("send_timeout", "output blocked past send_timeout"))

    # -- frames ----------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continued is not None and kind != h2.CONTINUATION:
            raise ProtocolError("header block interrupted")
        if not self.handshaken:
            if kind != h2.SETTINGS or flags & h2.ACK:
                raise ProtocolError("the first frame must be SETTINGS")
            self.handshaken = True
        if kind == h2.DATA:
            self._data(flags, stream_id, payload)
        elif kind == h2.HEADERS:
            if stream_id == 0:
                raise ProtocolError("HEADERS on stream 0")
            block = h2.header_block(flags, payload)
            if not block and not flags & (h2.END_STREAM | h2.END_HEADERS):
                self._empty_frame()
            if flags & h2.END_HEADERS:
                self._headers(stream_id, flags, block)
            else:
                self._continued = (stream_id, flags, bytearray(block))
        elif kind == h2.CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == h2.SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == h2.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == h2.PING:
            if len(payload) != 8 or stream_id != 0:
                raise ProtocolError("PING of wrong length", h2.FRAME_SIZE_ERROR)
            if not flags & h2.ACK:
                if not self._pings.take(self._now):
                    raise h2.calm("ping_rate", "PING flood")
                self.control(h2.frame(h2.PING, h2.ACK, 0, payload))
        elif kind == h2.RST_STREAM:
            h2.parse_u32(payload, "RST_STREAM")
            call = self._calls.get(stream_id)
            if call is not None:
                if not call.ended and not self._resets.take(self._now):
                    raise h2.calm("reset_rate", "too many streams reset")
                self.drop(call)
        elif kind == h2.GOAWAY:
            self._going_away = True
            self.close_if_idle()
        elif kind == h2.PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).

    def _empty_frame(self) -> None:
        if not self._empty.take(self._now):
            raise h2.calm("empty_frame_rate", "too many empty frames")

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continued is None or self._continued[0] != stream_id:
            raise ProtocolError("unexpected CONTINUATION")
        if not self._continuations.take(self._now):
            raise h2.calm("continuation_rate", "CONTINUATION flood")
        if not payload and not flags & h2.END_HEADERS:
            self._empty_frame()
        block = self._continued[2]
        block += payload
        if len(block) > self.limits.max_header_block:
            raise h2.calm("max_header_block", "header block too large")
        if flags & h2.END_HEADERS:
            first_flags = self._continued[1]
            self._continued = None
            self._headers(stream_id, first_flags, bytes(block))

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ProtocolError("SETTINGS on a stream")
        if flags & h2.ACK:
            return
        if not self._settings_bucket.take(self._now):
            raise h2.calm("settings_rate", "SETTINGS flood")
        opened = False
        for key, value in h2.parse_settings(payload):
            if key == h2.INITIAL_WINDOW_SIZE:
                if value > h2.MAX_WINDOW:
                    raise ProtocolError("initial window too large", h2.FLOW_CONTROL_ERROR)
                opened = value > self._peer_initial_window
                self._peer_initial_window = value  # O(1): windows are initial + credit
            elif key == h2.MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise ProtocolError("invalid max frame size")
                self._peer_max_frame = value
        self.control(h2.frame(h2.SETTINGS, h2.ACK, 0))
        if opened:
            self.stream_windows_opened()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        increment = h2.parse_u32(payload, "WINDOW_UPDATE")
        if stream_id == 0:
            if increment == 0:
                raise ProtocolError("zero WINDOW_UPDATE")
            self._send_window += increment
            if self._send_window > h2.MAX_WINDOW:
                raise ProtocolError("connection window overflow", h2.FLOW_CONTROL_ERROR)
            self.connection_window_opened()
            return
        call = self._calls.get(stream_id)
        if call is None:
            return
        if increment == 0:
            self.reset(call, h2.PROTOCOL_ERROR)
            return
        if self._peer_initial_window + call.credit + increment > h2.MAX_WINDOW:
            self.reset(call, h2.FLOW_CONTROL_ERROR)
            return
        call.credit += increment
        if call.pending:
            self.send_call(call)

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            fields = self._decoder.decode(block)
        except OversizedHeaderListError as exc:
            raise h2.calm("max_header_block", "header list too large") from exc
        except HPACKError as exc:
            raise ProtocolError("bad header block", h2.COMPRESSION_ERROR) from exc
        call = self._calls.get(stream_id)
        if call is not None:  # trailers from the client: only END_STREAM matters
            if flags & h2.END_STREAM:
                self.remote_end(call)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream:
            if stream_id > self._last_stream:
                raise ProtocolError("client stream ids must be odd and increasing")
            return  # a stream we already closed: ignore
        self._last_stream = stream_id
        if self._going_away or len(self._calls) >= self.limits.max_concurrent_streams:
            if not self._going_away:
                self.stats.hit("max_concurrent_streams")
                if not self._resets.take(self._now):
                    raise h2.calm("reset_rate", "too many streams refused")
            self._out.append(h2.rst_stream_frame(stream_id, h2.REFUSED_STREAM))
            return
        metadata: Metadata = {}
        for name, value in fields:
            metadata.setdefault(str(name), str(value))
        call = Call(stream_id, self.limits.stream_window, metadata)
        self._calls[stream_id] = call
        path = metadata.get(":path", "")
        server = self.server
        try:
            stream = server.streams.get(path)
            if stream is not None:
                call.session = stream(metadata)
                self.stats.streams += 1
            else:
                unary = server.unary.get(path)
                if unary is None:
                    raise GrpcError(h2.UNIMPLEMENTED, UNKNOWN_METHOD)
                call.unary = unary
        except GrpcError as exc:
            self.end(call, exc.status, exc.message)
        except Exception:
            logger.exception("opening %r failed", path[:200])
            self.end(call, h2.INTERNAL, "internal error")
        if flags & h2.END_STREAM:
            self.remote_end(call)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        limits = self.limits
        if size > self._recv_window:
            raise ProtocolError("connection window exceeded", h2.FLOW_CONTROL_ERROR, "flow_control")
        self._recv_window -= size
        if self._recv_window * 2 <= limits.connection_window:
            self._out.append(
                h2.window_update_frame(0, limits.connection_window - self._recv_window)
            )
            self._recv_window = limits.connection_window
        call = self._calls.get(stream_id)
        if call is None:
            if stream_id == 0:
                raise ProtocolError("DATA on stream 0")
            return  # closed or reset: nothing to do
        if call.remote_closed:
            self.reset(call, h2.STREAM_CLOSED)
            return
        if size > call.recv_window:
            self.stats.hit("flow_control")
            self.reset(call, h2.FLOW_CONTROL_ERROR)
            return
        call.recv_window -= size
        data = h2.strip_padding(flags, payload)
        end_stream = flags & h2.END_STREAM
        if not data and not end_stream:
            self._empty_frame()
        if not call.ended and data:
            self.receive(call, data)
            if not call.ended and not end_stream:
                self.refill(call)
        if end_stream:
            self.remote_end(call)
