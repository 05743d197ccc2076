"""A lean gRPC-over-HTTP/2 transport on asyncio, for the ext_proc hot path.

`cascade serve --transport h2` serves the same methods as the grpc.aio server (ext_proc
`Process`, `grpc.health.v1.Health/Check`, the `cascade.v1` API) without grpcio: one
`asyncio.Protocol` per connection (`H2Connection`, connection.py) parses frames, hands each
complete gRPC message to the method's handler and writes the answer in the same event-loop
callback. grpc.aio spends ≈ 300 µs of interpreter time per ext_proc stream in its own machinery;
this spends a fraction of that (bench/README.md).

Scope, stated: h2c with prior knowledge or TLS with ALPN `h2` (what Envoy's gRPC client
speaks); no compression (a compressed message ends the call with UNIMPLEMENTED); no server push;
deadlines (`grpc-timeout`) are the client's to enforce (Envoy's `message_timeout`). Flow control
is honoured both ways. Everything a client can make the server hold or do is bounded by
`H2Limits` (limits.py; docs/security.md), and counted in `H2Stats`.

This module is the listener: its own accept loop (a connection limit; on EMFILE/ENFILE it stops
accepting for `accept_backoff` seconds with one log line, instead of a traceback per attempt),
one sweeper task for every connection's timeouts, and the drain on `stop`.

Methods are registered by path:
- stream methods: a factory `(metadata) -> Session`; the session answers each request message
  at once with one serialized response (`message`), says when it has ended the call early
  (`done`) and is closed exactly once (`close`) however the call ends;
- unary methods: `(request bytes, metadata) -> response bytes` or an awaitable of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import socket
import ssl
import time

from extproc.transport.h2.calls import Metadata, Session, StreamMethod, UnaryMethod
from extproc.transport.h2.connection import H2Connection
from extproc.transport.h2.limits import H2Limits, H2Stats

__all__ = [
    "H2Connection",
    "H2Limits",
    "H2Server",
    "H2Stats",
    "Metadata",
    "Session",
    "StreamMethod",
    "UnaryMethod",
    "tls_context",
]

logger = logging.getLogger("extproc.transport.h2")

#: accept() failures that mean "out of descriptors or memory": back off, quietly
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: connections accepted per readable event at most (the loop serves the others in between)
_ACCEPT_BATCH = 64
#: at most one connection-error log line per this many seconds (the rest are counted)
_LOG_INTERVAL = 1.0


class H2Server:
    """Listens, tracks connections, runs their timeouts, drains on `stop`."""

    def __init__(
        self,
        streams: dict[str, StreamMethod],
        unary: dict[str, UnaryMethod],
        max_message: int | None = None,
        limits: H2Limits | None = None,
        stats: H2Stats | None = None,
    ) -> None:
        limits = limits if limits is not None else H2Limits()
        if max_message is not None:
            limits = dataclasses.replace(
                limits,
                max_message=max_message,
                max_buffered_bytes=max(limits.max_buffered_bytes, max_message),
                max_buffered_total=max(limits.max_buffered_total, max_message),
            )
        self.streams = streams
        self.unary = unary
        self.limits = limits
        self.stats = stats if stats is not None else H2Stats()
        self.connections: set[H2Connection] = set()
        self._sockets: list[socket.socket] = []
        self._ssl: ssl.SSLContext | None = None
        self._accepting = False
        self._backing_off = False
        #: accepted sockets whose transport is still being made (TLS handshake)
        self._opening = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._logged_at = -_LOG_INTERVAL
        self._unlogged = 0

    @property
    def max_message(self) -> int:
        return self.limits.max_message

    @property
    def in_flight(self) -> int:
        """Stream calls currently open."""
        return self.stats.streams

    # -- listening -------------------------------------------------------------------------------

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> int:
        """Listen on every address of `host`; `reuse_port` lets other processes share the port
        (SO_REUSEPORT: the kernel splits connections between them), else a busy port fails."""
        loop = asyncio.get_running_loop()
        self._ssl = ssl_context
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[tuple[int, object]] = set()
        for family, kind, proto, _name, found in infos:
            if (family, found) in seen:
                continue
            seen.add((family, found))
            address = found
            if self._sockets and port == 0:  # every address on the one port chosen first
                address = (found[0], self._sockets[0].getsockname()[1], *found[2:])
            self._sockets.append(_listen(family, kind, proto, address, reuse_port=reuse_port))
        self._accepting = True
        self._resume_accepting()
        self._sweeper = loop.create_task(self._sweep())
        return int(self._sockets[0].getsockname()[1])

    def _resume_accepting(self) -> None:
        self._backing_off = False
        if not self._accepting:
            return
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause_accepting(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())

    def _accept(self, listener: socket.socket) -> None:
        limits = self.limits
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._back_off(exc)
                return
            if len(self.connections) + self._opening >= limits.max_connections:
                self.stats.hit("max_connections")
                sock.close()
                continue
            sock.setblocking(False)
            self._opening += 1
            asyncio.get_running_loop().create_task(self._open(sock))

    def _back_off(self, exc: OSError) -> None:
        """Out of descriptors (or another accept failure): stop accepting for a while."""
        if self._backing_off:
            return
        self._backing_off = True
        if exc.errno in _RESOURCE_ERRORS:
            self.stats.hit("accept_backoff")
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        logger.warning(
            "accept failed (%s) with %d connections open: not accepting for %.1f s",
            name,
            len(self.connections),
            self.limits.accept_backoff,
        )
        self._pause_accepting()
        asyncio.get_running_loop().call_later(self.limits.accept_backoff, self._resume_accepting)

    async def _open(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._ssl is None:
                await loop.connect_accepted_socket(lambda: H2Connection(self), sock)
            else:
                await loop.connect_accepted_socket(
                    lambda: H2Connection(self),
                    sock,
                    ssl=self._ssl,
                    ssl_handshake_timeout=self.limits.handshake_timeout,
                )
        except TimeoutError:  # the TLS handshake took longer than handshake_timeout
            self.stats.hit("handshake_timeout")
            sock.close()
        except (OSError, ssl.SSLError):
            sock.close()
        finally:
            self._opening -= 1

    # -- connections -----------------------------------------------------------------------------

    def connection_opened(self, connection: H2Connection) -> None:
        self.connections.add(connection)
        self.stats.connections = len(self.connections)
        self.stats.connections_accepted += 1

    def connection_closed(self, connection: H2Connection) -> None:
        self.connections.discard(connection)
        self.stats.connections = len(self.connections)

    def log_failure(self, code: int, message: str, limit: str) -> None:
        """One line per `_LOG_INTERVAL` at most; `message` and `limit` are our own text."""
        now = time.monotonic()
        if now - self._logged_at < _LOG_INTERVAL:
            self._unlogged += 1
            return
        more, self._unlogged = self._unlogged, 0
        self._logged_at = now
        logger.warning(
            "HTTP/2 connection error %d: %s%s (%d more since the last report)",
            code,
            message,
            f" [limit {limit}]" if limit else "",
            more,
        )

    async def _sweep(self) -> None:
        limits = self.limits
        shortest = min(
            limits.handshake_timeout,
            limits.idle_timeout,
            limits.keepalive_interval,
            limits.keepalive_timeout,
            limits.send_timeout,
        )
        interval = min(1.0, max(0.02, shortest / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self.connections):
                try:
                    connection.tick(now)
                except Exception:
                    logger.exception("connection timer failed")

    def idle_changed(self) -> None:
        if all(connection.idle for connection in self.connections):
            self._idle.set()

    async def stop(self, grace: float) -> None:
        """Stop accepting, send GOAWAY, wait up to `grace` for open calls, then close."""
        self._accepting = False
        if self._sockets:
            self._pause_accepting()
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
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
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await asyncio.sleep(0)  # let the aborted transports call connection_lost


def _listen(
    family: int, kind: int, proto: int, address: tuple[object, ...], *, reuse_port: bool
) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def tls_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server TLS context offering ALPN `h2` (what gRPC clients ask for); with `client_ca`,
    a client certificate signed by that CA is required (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
