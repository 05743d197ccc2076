"""HTTP plumbing on aiohttp's low-level server: the listening socket, numbered connections that
`stop()` can drop at once, the request head as the mock records it, a bounded body, responses.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

__all__ = [
    "MAX_HEADERS",
    "MAX_LINE",
    "SERVER_NAME",
    "BodyTooLarge",
    "MockServer",
    "RequestHead",
    "json_response",
    "open_listener",
    "read_body",
    "stream_response",
]

SERVER_NAME = "cascade-mock-backend"
#: Longest request line or header line accepted.
MAX_LINE = 64 * 1024
MAX_HEADERS = 100


class MockServer(web.Server):
    """aiohttp's low-level server that numbers its connections and can drop them all.

    Once `closing` is set, a connection that the event loop still hands over (accepted just
    before the port closed) is dropped at once instead of being served.
    """

    def __init__(self, handler: Any) -> None:
        super().__init__(
            handler,
            handler_cancellation=True,  # a dropped connection cancels its handler
            auto_decompress=False,  # bodies are counted as received
            access_log=None,
            lingering_time=0,  # after a 413 the connection closes without reading the rest
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
        )
        self.closing = False
        self._numbers: dict[RequestHandler, int] = {}
        self._ids = itertools.count(1)
        #: the SNI name each TLS connection asked for (`serve_tls` installs the callback)
        self._sni: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def serve_tls(self, context: ssl.SSLContext) -> None:
        """Record the server name each TLS client sends (the context's `sni_callback`)."""

        def remember(connection: Any, name: str | None, _context: ssl.SSLContext) -> None:
            if name is not None:
                self._sni[connection] = name

        context.sni_callback = remember

    def tls_names(self, request: web.BaseRequest) -> tuple[str | None, str | None]:
        """(SNI sent, client certificate's common name) of the request's TLS connection."""
        transport = request.transport
        connection = transport.get_extra_info("ssl_object") if transport is not None else None
        if connection is None:
            return None, None
        peer = connection.getpeercert() or {}
        subject = peer.get("subject", ())
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        return self._sni.get(connection), (names[0] if names else None)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._numbers[handler] = next(self._ids)
        if self.closing:
            transport.abort()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._numbers.pop(handler, None)
        super().connection_lost(handler, exc)

    def number(self, handler: RequestHandler) -> int:
        """The connection's number: 1, 2, ... in the order they were accepted (0 if gone)."""
        return self._numbers.get(handler, 0)

    def abort_all(self) -> None:
        """Drop every open connection now, whatever it is doing."""
        self.closing = True
        for handler in self.connections:
            if handler.transport is not None:
                handler.transport.abort()


async def open_listener(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket on the first address `host` resolves to."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


@dataclass(frozen=True)
class RequestHead:
    """A request as recorded: the target as received, header names lowercased."""

    method: str
    target: str
    headers: dict[str, str]
    content_length: int | None
    chunked: bool
    #: the backend's base path (`MockBackend(path_prefix=...)`), removed from `path`
    base: str = ""
    #: TLS: the SNI name the client sent, the common name of its certificate
    sni: str | None = None
    client_cert: str | None = None

    @property
    def path(self) -> str:
        path = self.target.split("?", 1)[0]
        return path[len(self.base) :] if self.base else path

    @classmethod
    def of(cls, request: web.BaseRequest) -> RequestHead:
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.raw_headers:
            key = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        codings = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",")]
        return cls(
            method=request.method,
            target=request.raw_path,
            headers=headers,
            content_length=request.content_length,
            chunked=codings[-1] == "chunked",
        )


class BodyTooLarge(Exception):
    """The request body is over the backend's limit."""


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body (chunked decoding done by aiohttp); BodyTooLarge past `limit` bytes."""
    parts: list[bytes] = []
    total = 0
    for _ in range(limit + 2):  # every chunk but the end carries a byte: at most limit + 1
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge
        parts.append(chunk)
    raise BodyTooLarge


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _header_safe(value: str) -> str:
    """Echoed values go into response headers: printable ASCII only."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in value)


def _headers(
    content_type: str, backend: str, extra: Iterable[tuple[str, str]], keep_alive: bool
) -> CIMultiDict[str]:
    return CIMultiDict(
        [
            ("content-type", content_type),
            ("server", SERVER_NAME),
            ("x-mock-backend", backend),
            *((name, _header_safe(value)) for name, value in extra),
            ("connection", "keep-alive" if keep_alive else "close"),
        ]
    )


def json_response(
    status: int,
    body: bytes,
    *,
    backend: str,
    extra: Iterable[tuple[str, str]] = (),
    keep_alive: bool,
    head: bool = False,
) -> web.Response:
    """A JSON answer (no body for HEAD); the connection closes after it unless `keep_alive`."""
    response = web.Response(
        status=status,
        reason=_reason(status),
        body=b"" if head else body,
        headers=_headers("application/json", backend, extra, keep_alive),
    )
    if not keep_alive:
        response.force_close()
    return response


def stream_response(
    *, backend: str, extra: Iterable[tuple[str, str]], keep_alive: bool
) -> web.StreamResponse:
    """An SSE answer: chunked on HTTP/1.1, delimited by the connection's end on HTTP/1.0."""
    headers = _headers("text/event-stream", backend, extra, keep_alive)
    headers.add("cache-control", "no-cache")
    response = web.StreamResponse(status=200, reason="OK", headers=headers)
    if not keep_alive:
        response.force_close()
    return response
