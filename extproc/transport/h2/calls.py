"""One gRPC call on an HTTP/2 stream (`Call`), the handler protocols, and the trailers we send."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote

from extproc.transport.h2 import frames as h2
from extproc.transport.h2.limits import H2Limits, H2Stats

Metadata = dict[str, str]


class Session(Protocol):
    @property
    def done(self) -> bool: ...

    def message(self, raw: bytes) -> bytes | list[bytes]:
        """The answer; or, as a list, none yet or several (a held answer released)."""
        ...

    def close(self) -> None: ...


StreamMethod = Callable[[Metadata], Session]
UnaryMethod = Callable[[bytes, Metadata], "bytes | Awaitable[bytes]"]


class Listener(Protocol):
    """What a connection needs of its server (`H2Server`), without importing it."""

    limits: H2Limits
    stats: H2Stats
    streams: dict[str, StreamMethod]
    unary: dict[str, UnaryMethod]

    def connection_opened(self, connection: Any) -> None: ...

    def connection_closed(self, connection: Any) -> None: ...

    def idle_changed(self) -> None: ...

    def log_failure(self, code: int, message: str, limit: str) -> None: ...


RESPONSE_HEADERS = h2.encode_headers(((":status", "200"), ("content-type", "application/grpc")))
OK_TRAILERS = h2.encode_headers((("grpc-status", "0"),))
#: the answer to a path no method is registered for: the path itself is not echoed back
UNKNOWN_METHOD = "method not implemented"


class Call:
    """One HTTP/2 stream carrying one gRPC call."""

    __slots__ = (
        "buffer",
        "credit",
        "ended",
        "headers_sent",
        "metadata",
        "pending",
        "recv_window",
        "remote_closed",
        "session",
        "stream_id",
        "task",
        "trailers",
        "unary",
    )

    def __init__(self, stream_id: int, recv_window: int, metadata: Metadata) -> None:
        self.stream_id = stream_id
        self.metadata = metadata
        #: the send window is the peer's SETTINGS_INITIAL_WINDOW_SIZE + `credit` (WINDOW_UPDATE
        #: increments minus bytes sent), so a SETTINGS change costs O(1), not a walk of streams
        self.credit = 0
        #: DATA bytes the peer may still send on this stream
        self.recv_window = recv_window
        #: bytes of a partial gRPC message
        self.buffer = bytearray()
        self.session: Session | None = None
        self.unary: UnaryMethod | None = None
        self.task: asyncio.Task[None] | None = None
        self.headers_sent = False
        #: our side has sent (or queued) its trailers
        self.ended = False
        self.remote_closed = False
        #: DATA bytes waiting for flow-control window
        self.pending = bytearray()
        #: trailers waiting behind `pending`
        self.trailers: bytes | None = None

    def missing(self, stream_window: int) -> int:
        """The window this call needs now: its partial message's rest, or one stream window."""
        buffer = self.buffer
        if len(buffer) < 5:
            return stream_window
        declared = int.from_bytes(buffer[1:5], "big") + 5 - len(buffer)
        return max(stream_window, declared)


#: what grpc-message leaves unencoded: printable ASCII except `%`
_GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def status_trailers(status: int, message: str, max_chars: int) -> bytes:
    """Trailers for a non-OK status; the message cut to `max_chars` and percent-encoded."""
    fields = [("grpc-status", str(status))]
    if message:
        fields.append(("grpc-message", percent_encode(message[:max_chars])))
    return h2.encode_headers(fields)


def percent_encode(message: str) -> str:
    """grpc-message is percent-encoded UTF-8 (printable ASCII other than % stays)."""
    return quote(message, safe=_GRPC_MESSAGE_SAFE)
