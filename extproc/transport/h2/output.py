"""The sending half of an h2 connection: frames out, flow control, back-pressure, call endings.

`CallOutput` is the base of `H2Connection` (connection.py). What it bounds:
- the socket's write buffer: above `write_high_water` asyncio calls `pause_writing` and the
  connection stops reading (so a client that never reads stops being served), below
  `write_low_water` it reads again;
- everything not yet on the wire (write buffer + DATA waiting for flow-control window) above
  `max_output_bytes`: GOAWAY ENHANCE_YOUR_CALM and close;
- control replies (PING/SETTINGS ACK) queued while the socket is not drained: at most
  `max_control_queued`.
Send windows are per stream `peer initial window + credit`, so a SETTINGS change is O(1); calls
waiting for window sit in one of two queues (their stream's window, or the connection's), so a
WINDOW_UPDATE only touches calls it can move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from extproc.transport.h2 import frames as h2
from extproc.transport.h2.calls import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    Call,
    Listener,
    status_trailers,
)
from extproc.transport.h2.frames import GrpcError, ProtocolError

logger = logging.getLogger("extproc.transport.h2")


class CallOutput(asyncio.Protocol):
    def __init__(self, server: Listener) -> None:
        self.server = server
        self.limits = server.limits
        self.stats = server.stats
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._calls: dict[int, Call] = {}
        self._last_stream = 0
        self._send_window = h2.DEFAULT_WINDOW
        self._peer_initial_window = h2.DEFAULT_WINDOW
        self._peer_max_frame = h2.DEFAULT_MAX_FRAME
        #: calls with DATA waiting for their stream's window / for the connection's
        self._wait_stream: dict[int, Call] = {}
        self._wait_connection: dict[int, Call] = {}
        #: bytes in the calls' `pending` (waiting for window)
        self._pending_bytes = 0
        #: bytes of partial messages buffered on this connection
        self._buffered = 0
        self._control_queued = 0
        self._write_paused = False
        #: frames wait in the input buffer for the next turn (connection.py)
        self._yielding = False
        #: progress marks for the send timeout: DATA bytes sent, times writing resumed
        self.sent_bytes = 0
        self.resumes = 0
        self._going_away = False
        self._closed = False
        self.closed_at = 0.0

    # -- asyncio write flow control --------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True
        self.stats.hit("write_high_water")
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.resumes += 1
        if self.transport is not None and not self._closed and not self._yielding:
            self.transport.resume_reading()

    def is_closed(self) -> bool:
        return self._closed

    @property
    def output_blocked(self) -> bool:
        """Output is waiting on the peer: it does not read, or gives no window."""
        return self._write_paused or bool(self._wait_stream) or bool(self._wait_connection)

    # -- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        out = self._out
        transport = self.transport
        if not out or transport is None or self._closed or transport.is_closing():
            out.clear()
            return
        transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()
        buffered = transport.get_write_buffer_size()
        if not buffered:
            self._control_queued = 0
        elif buffered + self._pending_bytes > self.limits.max_output_bytes:
            self.fail(ProtocolError("output over max_output_bytes", h2.ENHANCE_YOUR_CALM))

    def control(self, frame: bytes) -> None:
        """Queue a control reply; too many while the socket is not drained is a flood."""
        self._out.append(frame)
        self._control_queued += 1
        if self._control_queued > self.limits.max_control_queued:
            raise h2.calm("max_control_queued", "too many control frames queued")

    def fail(self, error: ProtocolError) -> None:
        """GOAWAY with the error's code, then close (abort when the peer does not read)."""
        if self._closed:
            return
        limit = error.limit
        if error.code == h2.ENHANCE_YOUR_CALM and not limit:
            limit = "max_output_bytes"
        if limit:
            self.stats.hit(limit)
        self.stats.goaways += 1
        self.server.log_failure(error.code, str(error), limit)
        self._out.append(h2.goaway_frame(self._last_stream, error.code, str(error).encode()[:200]))
        data = b"".join(self._out)
        self._out.clear()
        self.close_now(data)

    def close_now(self, data: bytes = b"") -> None:
        """Write `data` if the socket takes it, and close; a stuck socket is aborted."""
        self._closed = True
        self.closed_at = time.monotonic()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        if transport.get_write_buffer_size() > self.limits.write_low_water:
            transport.abort()  # the peer does not read: what is queued would never leave
        elif transport.can_write_eof():
            # FIN after the GOAWAY, and keep swallowing input until the peer closes (or `tick`
            # aborts a second later): closing with unread input would send a RST that can
            # destroy the GOAWAY before the peer reads it
            try:
                transport.write_eof()
            except OSError:  # the peer is already gone (ENOTCONN): nothing left to tell it
                transport.abort()
                return
            transport.resume_reading()
        else:
            transport.close()

    # -- calls -------------------------------------------------------------------------------

    def send_message(self, call: Call, payload: bytes) -> None:
        if call.ended:
            return
        if not call.headers_sent:
            call.headers_sent = True
            self._out.append(h2.frame(h2.HEADERS, h2.END_HEADERS, call.stream_id, RESPONSE_HEADERS))
        framed = h2.grpc_message(payload)
        call.pending += framed
        self._pending_bytes += len(framed)
        self.send_call(call)

    def end(self, call: Call, status: int, message: str) -> None:
        """Our side of the call ends with `status` (trailers; trailers-only when nothing sent)."""
        if call.ended:
            return
        call.ended = True
        self.release_buffer(call)
        if status == h2.OK:
            block = OK_TRAILERS
        else:
            block = status_trailers(status, message, self.limits.max_status_message)
        if not call.headers_sent:
            call.headers_sent = True
            block = RESPONSE_HEADERS + block
        call.trailers = block
        self.send_call(call)
        self.close_session(call)
        self.forget_if_finished(call)

    def send_call(self, call: Call) -> None:
        """Send what the windows allow of the call's pending DATA, then its trailers."""
        pending = call.pending
        stream_id = call.stream_id
        if pending:
            view = memoryview(pending)
            sent = 0
            total = len(pending)
            while sent < total:
                window = self._peer_initial_window + call.credit
                size = min(total - sent, window, self._send_window, self._peer_max_frame)
                if size <= 0:
                    break
                self._out.append(h2.frame(h2.DATA, 0, stream_id, bytes(view[sent : sent + size])))
                sent += size
                call.credit -= size
                self._send_window -= size
            view.release()
            if sent:
                del pending[:sent]
                self._pending_bytes -= sent
                self.sent_bytes += sent
            if pending:
                if self._peer_initial_window + call.credit <= 0:
                    self._wait_connection.pop(stream_id, None)
                    self._wait_stream[stream_id] = call
                else:
                    self._wait_stream.pop(stream_id, None)
                    self._wait_connection.pop(stream_id, None)  # to the back of the queue
                    self._wait_connection[stream_id] = call
                return
            self._wait_stream.pop(stream_id, None)
            self._wait_connection.pop(stream_id, None)
        if call.trailers is not None:
            self._out.append(
                h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream_id, call.trailers)
            )
            call.trailers = None
            self.forget_if_finished(call)

    def connection_window_opened(self) -> None:
        """The connection's window grew: calls waiting for it send, oldest first."""
        waiting = self._wait_connection
        while waiting and self._send_window > 0:
            self.send_call(next(iter(waiting.values())))

    def stream_windows_opened(self) -> None:
        """SETTINGS raised every stream's window: calls waiting for theirs try again."""
        for call in list(self._wait_stream.values()):
            if self._send_window <= 0:
                break
            self.send_call(call)

    def forget_if_finished(self, call: Call) -> None:
        """Both sides done and nothing left to send: the stream is closed."""
        if call.ended and call.remote_closed and not call.pending and call.trailers is None:
            self._calls.pop(call.stream_id, None)
            self.close_if_idle()
            if not self._calls:
                self.became_idle()

    def reset(self, call: Call, code: int) -> None:
        self._out.append(h2.rst_stream_frame(call.stream_id, code))
        self.drop(call)

    def drop(self, call: Call) -> None:
        """The stream is gone (reset or connection lost): release it without sending."""
        self._calls.pop(call.stream_id, None)
        call.ended = True
        self.release_buffer(call)
        self._pending_bytes -= len(call.pending)
        call.pending.clear()
        self._wait_stream.pop(call.stream_id, None)
        self._wait_connection.pop(call.stream_id, None)
        call.trailers = None
        if call.task is not None and not call.task.done():
            call.task.cancel()
        self.close_session(call)
        self.close_if_idle()
        if not self._calls:
            self.became_idle()

    def release_buffer(self, call: Call) -> None:
        """Forget the call's partial message (and its share of the buffered-bytes caps)."""
        size = len(call.buffer)
        if size:
            self.buffered_changed(-size)
            call.buffer = bytearray()

    def buffered_changed(self, delta: int) -> None:
        self._buffered += delta
        self.stats.buffered_bytes += delta

    def became_idle(self) -> None:
        raise NotImplementedError

    def close_session(self, call: Call) -> None:
        session = call.session
        if session is None:
            return
        call.session = None
        self.stats.streams -= 1
        try:
            session.close()
        except Exception:
            logger.exception("stream %d: closing the handler failed", call.stream_id)

    def close_if_idle(self) -> None:
        if self._going_away and not self._calls and self.transport is not None:
            self.flush()
            self.close_now()

    # -- messages in ----------------------------------------------------------------------

    def receive(self, call: Call, data: bytes) -> None:
        limits = self.limits
        if self._buffered + len(data) > limits.max_buffered_bytes:
            self.stats.hit("max_buffered_bytes")
            self.end(call, h2.RESOURCE_EXHAUSTED, "connection buffer full")
            return
        if self.stats.buffered_bytes + len(data) > limits.max_buffered_total:
            self.stats.hit("max_buffered_total")
            self.end(call, h2.RESOURCE_EXHAUSTED, "server buffer full")
            return
        buffer = call.buffer
        before = len(buffer) + len(data)
        buffer += data
        self.buffered_changed(len(data))
        try:
            messages = h2.read_grpc_messages(buffer, limits.max_message)
        except GrpcError as exc:
            if exc.status == h2.RESOURCE_EXHAUSTED:
                self.stats.hit("max_message")
            self.end(call, exc.status, exc.message)
            return
        self.buffered_changed(len(buffer) - before)
        if not buffer:  # consumed: drop the allocation too (del from the front keeps it)
            call.buffer = bytearray()
        try:
            if call.session is not None:
                self._stream_messages(call, messages)
            elif messages:
                self._unary_message(call, messages)
        except GrpcError as exc:
            self.end(call, exc.status, exc.message)

    def refill(self, call: Call) -> None:
        """Top the stream's window up to a stream window, or to what its message still needs."""
        stream_window = self.limits.stream_window
        target = min(call.missing(stream_window), h2.MAX_WINDOW)
        window = call.recv_window
        if window * 2 <= target or (target > stream_window and window < target):
            self._out.append(h2.window_update_frame(call.stream_id, target - window))
            call.recv_window = target

    # -- messages to handlers --------------------------------------------------------------------

    def _stream_messages(self, call: Call, messages: list[bytes]) -> None:
        session = call.session
        assert session is not None
        for raw in messages:
            try:
                answer = session.message(raw)
            except Exception:
                logger.exception("stream %d: handler failed", call.stream_id)
                self.end(call, h2.INTERNAL, "internal error")
                return
            for one in answer if isinstance(answer, list) else (answer,):
                self.send_message(call, one)
            if session.done:
                self.end(call, h2.OK, "")
                return

    def _unary_message(self, call: Call, messages: list[bytes]) -> None:
        if len(messages) > 1 or call.task is not None or len(call.buffer):
            raise GrpcError(h2.INVALID_ARGUMENT, "a unary call takes one message")
        unary = call.unary
        assert unary is not None
        try:
            result = unary(messages[0], call.metadata)
        except GrpcError:
            raise
        except Exception:
            logger.exception("unary %r failed", call.metadata.get(":path"))
            self.end(call, h2.INTERNAL, "internal error")
            return
        if isinstance(result, bytes):
            self.send_message(call, result)
            self.end(call, h2.OK, "")
            return
        call.task = asyncio.ensure_future(self._finish_unary(call, result))

    async def _finish_unary(self, call: Call, pending: Awaitable[bytes]) -> None:
        try:
            answer = await pending
        except GrpcError as exc:
            self.end(call, exc.status, exc.message)
        except asyncio.CancelledError:
            return
        except Exception:
            logger.exception("unary %r failed", call.metadata.get(":path"))
            self.end(call, h2.INTERNAL, "internal error")
        else:
            self.send_message(call, answer)
            self.end(call, h2.OK, "")
        self.flush()

    def remote_end(self, call: Call) -> None:
        call.remote_closed = True
        if not call.ended:
            if call.session is not None:
                self.end(call, h2.OK, "")
            elif call.task is None:
                self.end(call, h2.INVALID_ARGUMENT, "a unary call takes one message")
        self.forget_if_finished(call)
