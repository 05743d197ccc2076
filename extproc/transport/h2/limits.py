"""The h2 transport's limits (`H2Limits`), its counters (`H2Stats`) and a token bucket.

Every bound the transport enforces is a field of `H2Limits`, with its default here and its
meaning in docs/security.md ("HTTP/2 transport limits"). Each time a peer runs into one, the
counter of the same name in `H2Stats.limit_hits` goes up; the app layer exposes the counters on
`/metrics` (extproc/app/transport_metrics.py). The transport itself keeps plain integers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class H2Limits:
    """Bounds of one `H2Server`; the defaults are what `cascade serve` uses."""

    # -- connections ---------------------------------------------------------------------------
    #: open connections at most; one more is accepted and closed at once
    max_connections: int = 512
    #: seconds from accept to the client's preface and first SETTINGS frame
    handshake_timeout: float = 10.0
    #: seconds a connection may stay without open streams before GOAWAY
    idle_timeout: float = 300.0
    #: seconds of silence from the client before the server sends a keep-alive PING
    keepalive_interval: float = 60.0
    #: seconds after that PING for any frame from the client, else the connection is closed
    keepalive_timeout: float = 20.0
    #: seconds output may stay blocked (socket not drained, or windows at 0) without progress
    send_timeout: float = 30.0
    #: seconds to stop accepting after accept() fails with EMFILE/ENFILE (one log line each)
    accept_backoff: float = 1.0

    # -- streams and flow control --------------------------------------------------------------
    #: SETTINGS_MAX_CONCURRENT_STREAMS, advertised and enforced (REFUSED_STREAM beyond)
    max_concurrent_streams: int = 1024
    #: receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE); a larger message gets its size
    stream_window: int = 1 * MiB
    #: receive window of the connection, topped up as data arrives
    connection_window: int = 4 * MiB
    #: largest gRPC message accepted (`cascade serve` derives it from the config, see app/run.py)
    max_message: int = 17 * MiB
    #: largest header block (HEADERS + CONTINUATION, encoded and decoded; MAX_HEADER_LIST_SIZE)
    max_header_block: int = 16 * KiB
    #: characters of a grpc-message sent in trailers (the rest is cut)
    max_status_message: int = 256

    # -- memory --------------------------------------------------------------------------------
    #: bytes of partial messages buffered per connection; the call that would pass it fails
    max_buffered_bytes: int = 32 * MiB
    #: the same over all connections of the server
    max_buffered_total: int = 64 * MiB
    #: the socket's write buffer above this: stop reading the connection (pause_writing)
    write_high_water: int = 1 * MiB
    #: ... and resume reading below this
    write_low_water: int = 256 * KiB
    #: write buffer + output waiting for flow-control window above this: GOAWAY and close
    max_output_bytes: int = 32 * MiB
    #: control replies (PING ACK, SETTINGS ACK) queued while the socket is not drained
    max_control_queued: int = 1000
    #: frames handled per event-loop turn on one connection; the rest wait (reading paused)
    #: so that one busy connection cannot hold the loop for long (fairness, not a cut-off)
    frames_per_turn: int = 500

    # -- rates per connection (token buckets: per second, burst) -------------------------------
    ping_rate: float = 10.0
    ping_burst: int = 50
    settings_rate: float = 10.0
    settings_burst: int = 50
    #: RST_STREAM for a call still running, and streams refused over max_concurrent_streams
    reset_rate: float = 100.0
    reset_burst: int = 1000
    #: DATA/HEADERS/CONTINUATION frames with nothing in them (and no END_STREAM)
    empty_frame_rate: float = 100.0
    empty_frame_burst: int = 100
    continuation_rate: float = 100.0
    continuation_burst: int = 100

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"h2 limit {item.name} must be a positive number, not {value!r}")
        if not 65_535 <= self.stream_window <= 2**31 - 1:
            raise ValueError("h2 limit stream_window must be within 65535 .. 2**31-1")
        if not 65_535 <= self.connection_window <= 2**31 - 1:
            raise ValueError("h2 limit connection_window must be within 65535 .. 2**31-1")
        if self.write_low_water > self.write_high_water:
            raise ValueError("h2 limit write_low_water must not exceed write_high_water")
        if self.max_buffered_bytes < self.max_message or self.max_buffered_total < self.max_message:
            raise ValueError("h2 limits max_buffered_bytes/_total must hold one max_message")

    def replace(self, overrides: dict[str, str]) -> H2Limits:
        """A copy with `overrides` (name → text, as on the command line) applied."""
        kinds = {item.name: item.type for item in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        for name, text in overrides.items():
            kind = kinds.get(name)
            if kind is None:
                raise ValueError(f"unknown h2 limit {name!r}; known: {', '.join(kinds)}")
            try:
                values[name] = int(text) if kind in ("int", int) else float(text)
            except ValueError:
                raise ValueError(f"h2 limit {name} needs a number, not {text!r}") from None
        return dataclasses.replace(self, **values)


#: the names `H2Stats.limit_hits` counts: the limits above, by field name
LIMIT_NAMES = (
    "max_connections",
    "handshake_timeout",
    "idle_timeout",
    "keepalive_timeout",
    "send_timeout",
    "accept_backoff",
    "max_concurrent_streams",
    "flow_control",  # the peer sent more than the window it was given
    "max_message",
    "max_header_block",
    "max_buffered_bytes",
    "max_buffered_total",
    "write_high_water",
    "max_output_bytes",
    "max_control_queued",
    "ping_rate",
    "settings_rate",
    "reset_rate",
    "empty_frame_rate",
    "continuation_rate",
)


@dataclass
class H2Stats:
    """Counters and gauges of one server, plain integers (read by the metrics collector)."""

    limit_hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LIMIT_NAMES, 0))
    #: connections open now, and accepted since start
    connections: int = 0
    connections_accepted: int = 0
    #: connection errors answered with GOAWAY (any code)
    goaways: int = 0
    #: bytes of partial inbound messages buffered now, over all connections
    buffered_bytes: int = 0
    #: stream calls open now
    streams: int = 0

    def hit(self, limit: str) -> None:
        self.limit_hits[limit] = self.limit_hits.get(limit, 0) + 1


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved; `take` says whether one was left."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
