"""A lean gRPC-over-HTTP/2 transport on asyncio, for the ext_proc hot path.

`cascade serve --transport h2` serves the same methods as the grpc.aio server (ext_proc
`Process`, `grpc.health.v1.Health/Check`, the `cascade.v1` API) without grpcio: one
`asyncio.Protocol` per connection parses frames, hands each complete gRPC message to the
method's handler and writes the answer in the same event-loop callback. grpc.aio spends
≈ 300 µs of interpreter time per ext_proc stream in its own machinery; this spends a fraction of
that, which is what lets the classification logic fit in the budget (bench/README.md).

Scope, stated: h2c with prior knowledge or TLS with ALPN `h2` (what Envoy's gRPC client
speaks); no compression (Envoy's ext_proc client sends none; a compressed message ends the call
with UNIMPLEMENTED); no server push; deadlines (`grpc-timeout`) are the client's to enforce
(Envoy's `message_timeout`). Flow control is honoured both ways.

Methods are registered by path:
- stream methods: a factory `(metadata) -> Session`; the session answers each request message
  at once with one serialized response (`message`), says when it has ended the call early
  (`done`) and is closed exactly once (`close`) however the call ends;
- unary methods: `(request bytes, metadata) -> response bytes` or an awaitable of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol, cast
from urllib.parse import quote

from hpack import Decoder
from hpack.exceptions import HPACKError

from extproc.transport.h2 import frames as h2
from extproc.transport.h2.frames import GrpcError, ProtocolError

logger = logging.getLogger(__name__)

Metadata = dict[str, str]


class Session(Protocol):
    @property
    def done(self) -> bool: ...

    def message(self, raw: bytes) -> bytes: ...

    def close(self) -> None: ...


StreamMethod = Callable[[Metadata], Session]
UnaryMethod = Callable[[bytes, Metadata], "bytes | Awaitable[bytes]"]

_RESPONSE_HEADERS = h2.encode_headers(((":status", "200"), ("content-type", "application/grpc")))
_OK_TRAILERS = h2.encode_headers((("grpc-status", "0"),))
#: advertised to the client: a large window per stream (message size is capped separately)
STREAM_WINDOW = h2.MAX_WINDOW
#: the connection's (and a stream's) window is topped up once this much has been received
CONNECTION_REFILL = 2**30
MAX_STREAMS = 1024
MAX_HEADER_BLOCK = 64 * 1024


class Call:
    """One HTTP/2 stream carrying one gRPC call."""

    __slots__ = (
        "buffer",
        "ended",
        "headers_sent",
        "metadata",
        "pending",
        "received",
        "remote_closed",
        "send_window",
        "session",
        "stream_id",
        "task",
        "trailers",
        "unary",
    )

    def __init__(self, stream_id: int, send_window: int, metadata: Metadata) -> None:
        self.stream_id = stream_id
        self.metadata = metadata
        self.send_window = send_window
        self.buffer = bytearray()
        #: DATA bytes received since the stream's window was last topped up
        self.received = 0
        self.session: Session | None = None
        self.unary: UnaryMethod | None = None
        self.task: asyncio.Task[None] | None = None
        self.headers_sent = False
        #: our side has sent (or queued) its trailers
        self.ended = False
        self.remote_closed = False
        #: DATA bytes and trailers waiting for flow-control window
        self.pending = bytearray()
        self.trailers: bytes | None = None


#: what grpc-message leaves unencoded: printable ASCII except `%`
_GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)
#: characters of a grpc-message kept (the trailers must fit one frame, 16 KiB at least)
MAX_STATUS_MESSAGE = 1024


def _status_trailers(status: int, message: str) -> bytes:
    fields = [("grpc-status", str(status))]
    if message:
        fields.append(("grpc-message", _percent_encode(message[:MAX_STATUS_MESSAGE])))
    return h2.encode_headers(fields)


def _percent_encode(message: str) -> str:
    """grpc-message is percent-encoded UTF-8 (printable ASCII other than % stays)."""
    return quote(message, safe=_GRPC_MESSAGE_SAFE)


class H2Connection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out: list[bytes] = []
        self._preface = False
        self._decoder = Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_BLOCK
        self._calls: dict[int, Call] = {}
        self._last_stream = 0
        #: (stream id, flags, fragments) of a header block awaiting CONTINUATION frames
        self._continued: tuple[int, int, bytearray] | None = None
        self._send_window = h2.DEFAULT_WINDOW
        self._peer_initial_window = h2.DEFAULT_WINDOW
        self._peer_max_frame = h2.DEFAULT_MAX_FRAME
        self._received = 0
        self._going_away = False
        self._closed = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not a subclass of asyncio.Transport)
        self.transport = transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        transport.write(
            h2.settings_frame(
                (
                    (h2.ENABLE_PUSH, 0),
                    (h2.MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                    (h2.INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                    (h2.MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK),
                )
            )
            + h2.window_update_frame(0, h2.MAX_WINDOW - h2.DEFAULT_WINDOW)
        )

    def data_received(self, data: bytes) -> None:
        buffer = self._in
        buffer += data
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
            for kind, flags, stream_id, payload in h2.read_frames(buffer, h2.DEFAULT_MAX_FRAME):
                self._frame(kind, flags, stream_id, payload)
        except ProtocolError as exc:
            self._fail(exc.code, str(exc))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        for call in list(self._calls.values()):
            self._drop(call)
        self.server.idle_changed()

    # -- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        transport = self.transport
        if self._out and transport is not None and not transport.is_closing():
            transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    def _fail(self, code: int, message: str) -> None:
        logger.warning("HTTP/2 connection error %d: %s", code, message)
        self._out.append(h2.goaway_frame(self._last_stream, code, message.encode()[:200]))
        self.flush()
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def go_away(self) -> None:
        """Refuse new streams (shutdown); the open ones finish."""
        if self._going_away or self._closed:
            return
        self._going_away = True
        self._out.append(h2.goaway_frame(self._last_stream, h2.NO_ERROR))
        self.flush()
        self._close_if_idle()

    def abort(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return not self._calls

    def _close_if_idle(self) -> None:
        if self._going_away and not self._calls and self.transport is not None:
            self.flush()
            self.transport.close()

    # -- frames ----------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continued is not None and kind != h2.CONTINUATION:
            raise ProtocolError("header block interrupted")
        if kind == h2.DATA:
            self._data(flags, stream_id, payload)
        elif kind == h2.HEADERS:
            if stream_id == 0:
                raise ProtocolError("HEADERS on stream 0")
            block = h2.header_block(flags, payload)
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
            if len(payload) != 8:
                raise ProtocolError("PING of wrong length", h2.FRAME_SIZE_ERROR)
            if not flags & h2.ACK:
                self._out.append(h2.frame(h2.PING, h2.ACK, 0, payload))
        elif kind == h2.RST_STREAM:
            h2.parse_u32(payload, "RST_STREAM")
            call = self._calls.get(stream_id)
            if call is not None:
                self._drop(call)
        elif kind == h2.GOAWAY:
            self._going_away = True
            self._close_if_idle()
        elif kind == h2.PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continued is None or self._continued[0] != stream_id:
            raise ProtocolError("unexpected CONTINUATION")
        block = self._continued[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolError("header block too large", h2.COMPRESSION_ERROR)
        if flags & h2.END_HEADERS:
            first_flags = self._continued[1]
            self._continued = None
            self._headers(stream_id, first_flags, bytes(block))

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ProtocolError("SETTINGS on a stream")
        if flags & h2.ACK:
            return
        for key, value in h2.parse_settings(payload):
            if key == h2.INITIAL_WINDOW_SIZE:
                if value > h2.MAX_WINDOW:
                    raise ProtocolError("initial window too large", h2.FLOW_CONTROL_ERROR)
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for call in self._calls.values():
                    call.send_window += delta
            elif key == h2.MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise ProtocolError("invalid max frame size")
                self._peer_max_frame = value
        self._out.append(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._send_pending()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        increment = h2.parse_u32(payload, "WINDOW_UPDATE")
        if stream_id == 0:
            if increment == 0:
                raise ProtocolError("zero WINDOW_UPDATE")
            self._send_window += increment
            if self._send_window > h2.MAX_WINDOW:
                raise ProtocolError("connection window overflow", h2.FLOW_CONTROL_ERROR)
        else:
            call = self._calls.get(stream_id)
            if call is None:
                return
            if increment == 0:
                self._reset(call, h2.PROTOCOL_ERROR)
                return
            if call.send_window + increment > h2.MAX_WINDOW:
                self._reset(call, h2.FLOW_CONTROL_ERROR)
                return
            call.send_window += increment
        self._send_pending()

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            fields = self._decoder.decode(block)
        except HPACKError as exc:
            raise ProtocolError(f"bad header block: {exc}", h2.COMPRESSION_ERROR) from exc
        call = self._calls.get(stream_id)
        if call is not None:  # trailers from the client: only END_STREAM matters
            if flags & h2.END_STREAM:
                self._remote_end(call)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream:
            if stream_id > self._last_stream:
                raise ProtocolError("client stream ids must be odd and increasing")
            return  # a stream we already closed: ignore
        self._last_stream = stream_id
        if self._going_away or len(self._calls) >= MAX_STREAMS:
            self._out.append(h2.rst_stream_frame(stream_id, h2.REFUSED_STREAM))
            return
        metadata: Metadata = {}
        for name, value in fields:
            metadata.setdefault(str(name), str(value))
        call = Call(stream_id, self._peer_initial_window, metadata)
        self._calls[stream_id] = call
        path = metadata.get(":path", "")
        try:
            stream = self.server.streams.get(path)
            if stream is not None:
                call.session = stream(metadata)
                self.server.in_flight += 1
            else:
                unary = self.server.unary.get(path)
                if unary is None:
                    raise GrpcError(h2.UNIMPLEMENTED, f"method {path} not implemented")
                call.unary = unary
        except GrpcError as exc:
            self._end(call, exc.status, exc.message)
        except Exception:
            logger.exception("opening %s failed", path)
            self._end(call, h2.INTERNAL, "internal error")
        if flags & h2.END_STREAM:
            self._remote_end(call)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received >= CONNECTION_REFILL:
            self._out.append(h2.window_update_frame(0, self._received))
            self._received = 0
        call = self._calls.get(stream_id)
        if call is None:
            if stream_id == 0:
                raise ProtocolError("DATA on stream 0")
            return  # closed or reset: nothing to do
        if call.remote_closed:
            self._reset(call, h2.STREAM_CLOSED)
            return
        call.received += len(payload)
        if call.received >= CONNECTION_REFILL:  # a very long stream (response chunks)
            self._out.append(h2.window_update_frame(stream_id, call.received))
            call.received = 0
        data = h2.strip_padding(flags, payload)
        if not call.ended:
            call.buffer += data
            try:
                messages = h2.read_grpc_messages(call.buffer, self.server.max_message)
                if call.session is not None:
                    self._stream_messages(call, messages)
                elif messages:
                    self._unary_message(call, messages)
            except GrpcError as exc:
                self._end(call, exc.status, exc.message)
        if flags & h2.END_STREAM:
            self._remote_end(call)

    # -- calls -------------------------------------------------------------------------------

    def _stream_messages(self, call: Call, messages: list[bytes]) -> None:
        session = call.session
        assert session is not None
        for raw in messages:
            try:
                answer = session.message(raw)
            except Exception:
                logger.exception("stream %d: handler failed", call.stream_id)
                self._end(call, h2.INTERNAL, "internal error")
                return
            self._send_message(call, answer)
            if session.done:
                self._end(call, h2.OK, "")
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
            logger.exception("unary %s failed", call.metadata.get(":path"))
            self._end(call, h2.INTERNAL, "internal error")
            return
        if isinstance(result, bytes):
            self._send_message(call, result)
            self._end(call, h2.OK, "")
            return
        call.task = asyncio.ensure_future(self._finish_unary(call, result))

    async def _finish_unary(self, call: Call, pending: Awaitable[bytes]) -> None:
        try:
            answer = await pending
        except GrpcError as exc:
            self._end(call, exc.status, exc.message)
        except asyncio.CancelledError:
            return
        except Exception:
            logger.exception("unary %s failed", call.metadata.get(":path"))
            self._end(call, h2.INTERNAL, "internal error")
        else:
            self._send_message(call, answer)
            self._end(call, h2.OK, "")
        self.flush()

    def _remote_end(self, call: Call) -> None:
        call.remote_closed = True
        if not call.ended:
            if call.session is not None:
                self._end(call, h2.OK, "")
            elif call.task is None:
                self._end(call, h2.INVALID_ARGUMENT, "a unary call takes one message")
        self._forget_if_finished(call)

    def _send_message(self, call: Call, payload: bytes) -> None:
        if call.ended:
            return
        if not call.headers_sent:
            call.headers_sent = True
            self._out.append(
                h2.frame(h2.HEADERS, h2.END_HEADERS, call.stream_id, _RESPONSE_HEADERS)
            )
        call.pending += h2.grpc_message(payload)
        self._send_call(call)

    def _end(self, call: Call, status: int, message: str) -> None:
        """Our side of the call ends with `status` (trailers; trailers-only when nothing sent)."""
        if call.ended:
            return
        call.ended = True
        block = _OK_TRAILERS if status == h2.OK else _status_trailers(status, message)
        if not call.headers_sent:
            call.headers_sent = True
            block = _RESPONSE_HEADERS + block
        call.trailers = block
        self._send_call(call)
        self._close_session(call)
        self._forget_if_finished(call)

    def _send_call(self, call: Call) -> None:
        """Send what the windows allow of the call's pending DATA, then its trailers."""
        pending = call.pending
        if pending:
            view = memoryview(pending)
            sent = 0
            while sent < len(pending):
                size = min(
                    len(pending) - sent, call.send_window, self._send_window, self._peer_max_frame
                )
                if size <= 0:
                    break
                self._out.append(
                    h2.frame(h2.DATA, 0, call.stream_id, bytes(view[sent : sent + size]))
                )
                sent += size
                call.send_window -= size
                self._send_window -= size
            view.release()
            del pending[:sent]
            if pending:
                return
        if call.trailers is not None:
            self._out.append(
                h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, call.stream_id, call.trailers)
            )
            call.trailers = None
            self._forget_if_finished(call)

    def _send_pending(self) -> None:
        for call in list(self._calls.values()):
            if call.pending or call.trailers is not None:
                self._send_call(call)

    def _forget_if_finished(self, call: Call) -> None:
        """Both sides done and nothing left to send: the stream is closed."""
        if call.ended and call.remote_closed and not call.pending and call.trailers is None:
            self._calls.pop(call.stream_id, None)
            self._close_if_idle()
            if not self._calls:
                self.server.idle_changed()

    def _reset(self, call: Call, code: int) -> None:
        self._out.append(h2.rst_stream_frame(call.stream_id, code))
        self._drop(call)

    def _drop(self, call: Call) -> None:
        """The stream is gone (reset or connection lost): release it without sending."""
        self._calls.pop(call.stream_id, None)
        call.ended = True
        call.pending.clear()
        call.trailers = None
        if call.task is not None and not call.task.done():
            call.task.cancel()
        self._close_session(call)
        self._close_if_idle()

    def _close_session(self, call: Call) -> None:
        session = call.session
        if session is None:
            return
        call.session = None
        self.server.in_flight -= 1
        try:
            session.close()
        except Exception:
            logger.exception("stream %d: closing the handler failed", call.stream_id)


class H2Server:
    """Listens, tracks connections, drains on `stop`."""

    def __init__(
        self,
        streams: dict[str, StreamMethod],
        unary: dict[str, UnaryMethod],
        max_message: int,
    ) -> None:
        self.streams = streams
        self.unary = unary
        self.max_message = max_message
        self.connections: set[H2Connection] = set()
        #: stream calls currently open
        self.in_flight = 0
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H2Connection(self), host, port, ssl=ssl_context, reuse_port=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    def idle_changed(self) -> None:
        if all(connection.idle for connection in self.connections):
            self._idle.set()

    async def stop(self, grace: float) -> None:
        """Stop accepting, send GOAWAY, wait up to `grace` for open calls, then close."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away()
        self._idle.clear()
        self.idle_changed()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            logger.warning("%d streams still open after %.1f s; closing", self.in_flight, grace)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


def tls_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server TLS context offering ALPN `h2` (what gRPC clients ask for)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context
