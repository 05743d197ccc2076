"""Mock OpenAI-compatible backends: for the tests, the demo and for trying the gateway.

A small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length and chunked request
bodies, `Expect: 100-continue`) that answers like an LLM server and names itself in every
answer, so routing is visible:

    POST /v1/chat/completions   JSON `chat.completion`, or SSE `chat.completion.chunk` events
                                when `"stream": true`; the assistant text starts with `[<name>]`
    GET  /v1/models             the backend's model(s)
    GET  /healthz               200 while running
    GET  /_mock/requests        what reached the backend (see `RecordedRequest`)
    GET  /_mock/script          the pending scripted responses
    POST /_mock/script          replace the script: `{"responses": ["503", "200"], "always": null}`
    POST /_mock/reset           clear the script and the recorded requests

Failures are injected three ways (details in docs/mock-backends.md):

* per request headers: `x-mock-fail: 503`, `x-mock-fail: 429:2` (429 with `Retry-After: 2`),
  `x-mock-fail-<name>: ...` (only the backend of that name fails), `x-mock-fail-attempts: N`
  (the header's failure applies to attempts 1..N, by `x-envoy-attempt-count`),
  `x-mock-delay-ms`, `x-mock-stream-delay-ms`, `x-mock-stream-chunks`;
* a script of upcoming responses (`POST /_mock/script` or `MockBackend.script`), one entry
  consumed by every `/v1/...` request, then back to normal (or to the `always` response);
* "connection refused": `await backend.stop()` closes the listening port and every open
  connection; `start()` binds the same port again.

Response specs (`Fault.parse`): `STATUS[:RETRY_AFTER][@DELAY_MS]` or `reset[@DELAY_MS]`, e.g.
`"200"`, `"503"`, `"429:1"`, `"200@1500"` (answer normally after 1.5 s), `"reset"` (close the
connection without an answer), or the object form
`{"status": 429, "retry_after": 1, "delay_ms": 0, "reset": false}`.

Request bodies are never logged or kept: only their length and the parsed `model`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, TypeVar

import orjson

__all__ = [
    "CHAT_PATH",
    "HEALTH_PATH",
    "MODELS_PATH",
    "Fault",
    "FaultSpec",
    "MockBackend",
    "MockBackendThread",
    "RecordedRequest",
]

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/healthz"
CONTROL_PREFIX = "/_mock/"

#: Longest request line or header line accepted (the StreamReader limit).
MAX_LINE = 64 * 1024
MAX_HEADERS = 100
MAX_DELAY_MS = 600_000
MAX_RETRY_AFTER = 86_400
MAX_STREAM_CHUNKS = 1_000

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_FAULT_RE = re.compile(
    r"(?:(?P<reset>reset)|(?P<status>\d{3})(?::(?P<retry>\d+))?)(?:@(?P<delay>\d+))?",
    re.ASCII,
)
_HEX_RE = re.compile(r"[0-9A-Fa-f]{1,16}")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Failure specs


@dataclass(frozen=True)
class Fault:
    """One injected response: a status (200 = a normal answer), Retry-After, a delay, or a reset.

    `reset` closes the connection after the delay without sending anything.
    """

    status: int = 200
    retry_after: int | None = None
    delay_ms: int = 0
    reset: bool = False

    def __post_init__(self) -> None:
        if not (self.status == 200 or 400 <= self.status <= 599):
            raise ValueError(f"status must be 200 or 400..599, got {self.status}")
        if self.retry_after is not None and not 0 <= self.retry_after <= MAX_RETRY_AFTER:
            raise ValueError(f"retry_after must be 0..{MAX_RETRY_AFTER} seconds")
        if not 0 <= self.delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"delay_ms must be 0..{MAX_DELAY_MS}")

    @classmethod
    def parse(cls, spec: FaultSpec) -> Fault:
        """A `Fault` from `"503"`, `"429:2"`, `"200@1500"`, `"reset"`, 503, or a mapping."""
        if isinstance(spec, Fault):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"not a response spec: {spec!r}")
        if isinstance(spec, int):
            return cls(status=spec)
        if isinstance(spec, str):
            match = _FAULT_RE.fullmatch(spec.strip().lower())
            if match is None:
                raise ValueError(
                    f"not a response spec: {spec!r} (expected STATUS[:RETRY_AFTER][@DELAY_MS] "
                    "or reset[@DELAY_MS])"
                )
            delay = int(match["delay"]) if match["delay"] else 0
            if match["reset"]:
                return cls(reset=True, delay_ms=delay)
            retry = int(match["retry"]) if match["retry"] is not None else None
            return cls(status=int(match["status"]), retry_after=retry, delay_ms=delay)
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"status", "retry_after", "delay_ms", "reset"}
            if unknown:
                raise ValueError(f"unknown response spec keys: {', '.join(sorted(unknown))}")
            status = spec.get("status", 200)
            retry_after = spec.get("retry_after")
            delay_ms = spec.get("delay_ms", 0)
            reset = spec.get("reset", False)
            ints_ok = all(
                isinstance(v, int) and not isinstance(v, bool) for v in (status, delay_ms)
            )
            retry_ok = retry_after is None or (
                isinstance(retry_after, int) and not isinstance(retry_after, bool)
            )
            if not (ints_ok and retry_ok and isinstance(reset, bool)):
                raise ValueError(f"bad response spec: {dict(spec)!r}")
            return cls(status=status, retry_after=retry_after, delay_ms=delay_ms, reset=reset)
        raise ValueError(f"not a response spec: {spec!r}")

    def spec(self) -> str:
        """The compact text form, the inverse of `parse`."""
        text = "reset" if self.reset else str(self.status)
        if not self.reset and self.retry_after is not None:
            text += f":{self.retry_after}"
        if self.delay_ms:
            text += f"@{self.delay_ms}"
        return text


#: What `Fault.parse` accepts.
FaultSpec = Fault | str | int | Mapping[str, Any]

_NORMAL = Fault()


# --------------------------------------------------------------------------------------------
# Recorded requests


@dataclass(frozen=True)
class RecordedRequest:
    """What reached the backend. The body itself is not kept."""

    index: int  #: 0, 1, 2, ... per backend (kept across `reset`)
    connection: int  #: connection number; equal for requests sharing a keep-alive connection
    method: str
    path: str  #: the request target as received, query included
    headers: dict[str, str]  #: names lowercased; repeated headers joined with ", "
    body_length: int  #: bytes of body received (after chunked decoding)
    content_length: int | None  #: the declared `content-length`, None when absent
    chunked: bool  #: the body came with `transfer-encoding: chunked`
    model: str | None  #: `model` of a JSON body, None when absent or unparsable
    stream: bool  #: `"stream": true` in the body
    attempt: int  #: `x-envoy-attempt-count`, else 1
    status: int  #: the status answered; 0 when the connection was reset on purpose
    time: float  #: wall clock (`time.time()`) when the request was complete
    monotonic: float  #: `time.monotonic()` at the same moment (same clock in every process)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _HttpError(Exception):
    """A request we cannot read; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The client closed the connection in the middle of a request."""


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    content_length: int | None
    chunked: bool

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] | None = None
    content_type: str = "application/json"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _header_safe(value: str) -> str:
    """Echoed values go into response headers: printable ASCII only."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in value)


def _head(status: int, headers: Iterable[tuple[str, str]], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.extend(f"{name}: {_header_safe(value)}" for name, value in headers)
    lines.append(f"date: {formatdate(usegmt=True)}")
    lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _error_body(message: str, kind: str, code: str | int | None = None) -> bytes:
    return _json({"error": {"message": message, "type": kind, "param": None, "code": code}})


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readline()
    except ValueError as exc:  # the line is longer than the reader's limit
        raise _HttpError(431, "header line too long") from exc
    if not line.endswith(b"\n"):
        raise _ClientGone
    return line


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


async def _read_head(
    reader: asyncio.StreamReader,
) -> tuple[str, str, str, dict[str, str]] | None:
    """Request line and header fields; None at a clean end of the connection."""
    line = b""
    for _ in range(4):  # tolerate a few empty lines before a request (RFC 9112 §2.2)
        try:
            line = await reader.readline()
        except ValueError as exc:
            raise _HttpError(414, "request line too long") from exc
        if not line:
            return None
        if line.strip():
            break
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1]:
        raise _HttpError(400, "malformed request line")
    method, target, version = parts

    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        raw = await _read_line(reader)
        if raw in (b"\r\n", b"\n"):
            return method, target, version, headers
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise _HttpError(431, "too many header lines")


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int
) -> _Request | None:
    """The next request on the connection; None at a clean end of the connection."""
    head = await _read_head(reader)
    if head is None:
        return None
    method, target, version, headers = head

    chunked = False
    if "transfer-encoding" in headers:
        codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
        if codings[-1] != "chunked":
            raise _HttpError(400, "unsupported transfer-encoding")
        chunked = True
    declared: int | None = None
    if "content-length" in headers:
        text = headers["content-length"]
        if not _is_digits(text):
            raise _HttpError(400, "bad content-length")
        declared = int(text)
    if not chunked and declared is not None and declared > max_body:
        raise _HttpError(413, f"body over {max_body} bytes")

    expects = headers.get("expect", "").lower() == "100-continue"
    if expects and version == "HTTP/1.1" and (chunked or declared):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()

    if chunked:
        body = await _read_chunked(reader, max_body)
    elif declared:
        try:
            body = await reader.readexactly(declared)
        except asyncio.IncompleteReadError as exc:
            raise _ClientGone from exc
    else:
        body = b""
    return _Request(method, target, version, headers, body, declared, chunked)


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    # Every chunk but the last carries at least one byte, so this ends within max_body + 1 turns.
    while True:
        size_text = (await _read_line(reader)).split(b";", 1)[0].strip().decode("latin-1")
        if not _HEX_RE.fullmatch(size_text):
            raise _HttpError(400, "bad chunk size")
        size = int(size_text, 16)
        if size == 0:
            for _ in range(MAX_HEADERS + 1):  # trailer fields, ignored
                if (await _read_line(reader)) in (b"\r\n", b"\n"):
                    return b"".join(parts)
            raise _HttpError(431, "too many trailer lines")
        total += size
        if total > max_body:
            raise _HttpError(413, f"body over {max_body} bytes")
        try:
            parts.append(await reader.readexactly(size))
        except asyncio.IncompleteReadError as exc:
            raise _ClientGone from exc
        if (await _read_line(reader)).strip():
            raise _HttpError(400, "chunk not followed by CRLF")


def _int_header(headers: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if not _is_digits(value.strip()) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return int(value)


def _attempt(headers: Mapping[str, str]) -> int:
    value = headers.get("x-envoy-attempt-count", "").strip()
    return int(value) if _is_digits(value) and int(value) >= 1 else 1


def _content_chars(messages: list[Any]) -> int:
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars


def _tokens(chars: int) -> int:
    """The mock's tokenizer: one token per four characters, at least one."""
    return max(1, math.ceil(chars / 4))


def _split(text: str, pieces: int) -> list[str]:
    """`text` cut at spaces into at most `pieces` parts whose concatenation is `text`."""
    words = text.split(" ")
    count = max(1, min(pieces, len(words)))
    bounds = [len(words) * i // count for i in range(count + 1)]
    parts = [" ".join(words[bounds[i] : bounds[i + 1]]) for i in range(count)]
    return [parts[0]] + [" " + p for p in parts[1:]]


# --------------------------------------------------------------------------------------------
# The backend


class MockBackend:
    """An in-process mock OpenAI-compatible backend on its own port.

    Use it from async code (`await start()` / `await stop()`, or `async with`); from synchronous
    code run it in `MockBackendThread`. `script`, `reset`, `requests` and `clear_requests` are
    thread-safe.
    """

    def __init__(
        self,
        name: str = "mock",
        models: Sequence[str] = ("mock-model",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        stream_delay_ms: int = 50,
        stream_chunks: int = 4,
        strict_models: bool = False,
        max_body_bytes: int = 32 * 1024 * 1024,
        max_recorded: int = 10_000,
    ) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"backend name must match {_NAME_RE.pattern}, got {name!r}")
        if isinstance(models, str) or not models or not all(models):
            raise ValueError("models must be a non-empty list of model names")
        if not 0 <= stream_delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"stream_delay_ms must be 0..{MAX_DELAY_MS}")
        if not 1 <= stream_chunks <= MAX_STREAM_CHUNKS:
            raise ValueError(f"stream_chunks must be 1..{MAX_STREAM_CHUNKS}")
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0..65535")
        if max_body_bytes < 0 or max_recorded < 1:
            raise ValueError("max_body_bytes must be >= 0 and max_recorded >= 1")
        self.name = name
        self.models = tuple(models)
        self.host = host
        #: The bound port after `start()`; kept after `stop()` so a restart binds it again.
        self.port = port
        self.stream_delay_ms = stream_delay_ms
        self.stream_chunks = stream_chunks
        self.strict_models = strict_models
        self.max_body_bytes = max_body_bytes
        self._lock = threading.Lock()
        self._pending: deque[Fault] = deque()
        self._always: Fault | None = None
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._request_ids = itertools.count()
        self._connection_ids = itertools.count(1)
        self._completion_ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: One task per accepted connection (cancelled by `stop`).
        self._tasks: set[asyncio.Task[None]] = set()
        #: Accepted sockets not yet owned by a transport, by task (closed when the task ends).
        self._raw_sockets: dict[asyncio.Task[None], socket.socket] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen on `host:port` (port 0: a free port, then in `.port`).

        The listening socket is served by the running loop's reader callback rather than
        `asyncio.start_server`: every accepted socket is then known at once, so `stop()` can close
        all of them (a connection accepted while an `asyncio.Server` closes can leak on 3.11).
        """
        if self._listener is not None:
            raise RuntimeError(f"mock backend {self.name} is already running")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(128)
            listener.setblocking(False)
            loop.add_reader(listener.fileno(), self._accept_ready, listener)
        except BaseException:
            listener.close()
            raise
        self._listener, self._loop = listener, loop
        self.port = listener.getsockname()[1]
        logger.info("mock backend %s listening on %s", self.name, self.url)

    def _accept_ready(self, listener: socket.socket) -> None:
        loop = self._loop
        if loop is None:  # stopped
            return
        for _ in range(64):  # a bounded batch per wake-up; the reader fires again if more wait
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again on the next wake-up
                logger.warning("mock backend %s: accept failed: %s", self.name, exc)
                return
            conn.setblocking(False)
            task = loop.create_task(self._on_socket(conn))
            self._tasks.add(task)
            self._raw_sockets[task] = conn
            task.add_done_callback(self._forget_connection)

    def _forget_connection(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        conn = self._raw_sockets.pop(task, None)
        if conn is not None:  # the task ended (or was cancelled) before a transport took it
            conn.close()

    async def stop(self) -> None:
        """Close the listening port and every open connection (clients then see "refused")."""
        listener, loop = self._listener, self._loop
        if listener is None or loop is None:
            return
        self._listener = self._loop = None
        loop.remove_reader(listener.fileno())
        listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:  # also those cancelled before they ever ran
            self._forget_connection(task)
        logger.info("mock backend %s stopped (port %d closed)", self.name, self.port)

    async def __aenter__(self) -> MockBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- control ------------------------------------------------------------------------------

    def script(
        self, responses: Iterable[FaultSpec] = (), *, always: FaultSpec | None = None
    ) -> None:
        """Replace the script: `responses` answer the next `/v1/...` requests, one each; after
        them every request gets `always` (None: a normal answer). Raises ValueError on a bad spec.
        """
        parsed = [Fault.parse(spec) for spec in responses]
        forever = Fault.parse(always) if always is not None else None
        with self._lock:
            self._pending = deque(parsed)
            self._always = forever

    def script_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending": [f.spec() for f in self._pending],
                "always": self._always.spec() if self._always else None,
            }

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._pending.clear()
            self._always = None
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first (all but `/healthz` and `/_mock/...`)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._pending:
                return self._pending.popleft()
            return self._always

    def _record(self, request: _Request, conn: int, **fields: Any) -> None:
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    index=next(self._request_ids),
                    connection=conn,
                    method=request.method,
                    path=request.target,
                    headers=dict(request.headers),
                    body_length=len(request.body),
                    content_length=request.content_length,
                    chunked=request.chunked,
                    time=time.time(),
                    monotonic=time.monotonic(),
                    **fields,
                )
            )

    # -- connections --------------------------------------------------------------------------

    async def _on_socket(self, conn: socket.socket) -> None:
        number = next(self._connection_ids)
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_LINE)
        except OSError:
            return  # the socket is closed by `_forget_connection`
        task = asyncio.current_task()
        if task is not None:
            self._raw_sockets.pop(task, None)  # the transport owns and closes it now
        try:
            await self._serve_connection(number, reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()  # stop(): drop the connection at once
            raise
        except (ConnectionError, _ClientGone, asyncio.IncompleteReadError):
            pass
        except Exception:
            logger.exception("mock backend %s: connection %d failed", self.name, number)
        finally:
            writer.close()  # after a normal end, buffered output is still sent, then closed

    async def _serve_connection(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:  # one turn per request; ends when the client or a `close` ends it
            try:
                request = await _read_request(reader, writer, self.max_body_bytes)
            except _HttpError as exc:
                body = _error_body(exc.message, "invalid_request_error")
                await self._send(writer, _Response(exc.status, body), keep_alive=False)
                return
            if request is None:
                return
            if not await self._dispatch(conn, request, writer):
                return

    async def _send(
        self, writer: asyncio.StreamWriter, response: _Response, *, keep_alive: bool
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("server", "cascade-mock-backend"),
            ("x-mock-backend", self.name),
            *(response.headers or []),
        ]
        writer.write(_head(response.status, headers, keep_alive) + response.body)
        await writer.drain()

    async def _dispatch(self, conn: int, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        keep_alive = request.keep_alive
        path = request.path
        if path.startswith("/v1/"):
            return await self._api(conn, request, writer, keep_alive)
        if path.startswith(CONTROL_PREFIX):
            response = self._control(request, path)
        elif path == HEALTH_PATH:
            response = (
                _Response(200, _json({"status": "ok", "backend": self.name}))
                if request.method in ("GET", "HEAD")
                else self._not_allowed("GET")
            )
        else:
            response = _Response(404, _error_body(f"no route for {path}", "not_found_error"))
            attempt = _attempt(request.headers)
            self._record(request, conn, model=None, stream=False, attempt=attempt, status=404)
        if request.method == "HEAD":
            response.body = b""
        await self._send(writer, response, keep_alive=keep_alive)
        return keep_alive

    @staticmethod
    def _not_allowed(allow: str) -> _Response:
        body = _error_body(f"method not allowed; use {allow}", "invalid_request_error")
        return _Response(405, body, [("allow", allow)])

    # -- control endpoints --------------------------------------------------------------------

    def _control(self, request: _Request, path: str) -> _Response:
        endpoint = path.removeprefix(CONTROL_PREFIX)
        if endpoint == "requests":
            if request.method != "GET":
                return self._not_allowed("GET")
            records = [r.as_dict() for r in self.requests]
            return _Response(200, _json({"backend": self.name, "requests": records}))
        if endpoint == "script":
            if request.method == "GET":
                return _Response(200, _json({"backend": self.name, **self.script_state()}))
            if request.method != "POST":
                return self._not_allowed("GET, POST")
            try:
                self._script_from_json(request.body)
            except ValueError as exc:
                return _Response(400, _error_body(str(exc), "invalid_request_error"))
            return _Response(200, _json({"backend": self.name, **self.script_state()}))
        if endpoint == "reset":
            if request.method != "POST":
                return self._not_allowed("POST")
            self.reset()
            return _Response(200, _json({"backend": self.name, "reset": True}))
        return _Response(404, _error_body(f"no control endpoint {path}", "not_found_error"))

    def _script_from_json(self, body: bytes) -> None:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError("script body is not valid JSON") from exc
        if isinstance(data, list):
            data = {"responses": data}
        if not isinstance(data, dict) or set(data) - {"responses", "always"}:
            raise ValueError('expected {"responses": [...], "always": spec or null} or a list')
        responses = data.get("responses", [])
        if not isinstance(responses, list):
            raise ValueError("responses must be a list")
        self.script(responses, always=data.get("always"))

    # -- the OpenAI-compatible API ------------------------------------------------------------

    async def _api(
        self, conn: int, request: _Request, writer: asyncio.StreamWriter, keep_alive: bool
    ) -> bool:
        headers = request.headers
        attempt = _attempt(headers)
        scripted = self._next_fault()  # every /v1 request consumes one script entry
        payload: dict[str, Any] | None = None
        if request.path == CHAT_PATH and request.body:
            with contextlib.suppress(orjson.JSONDecodeError):
                loaded = orjson.loads(request.body)
                payload = loaded if isinstance(loaded, dict) else None
        raw_model = payload.get("model") if payload is not None else None
        model = raw_model if isinstance(raw_model, str) and raw_model else None
        stream = payload is not None and payload.get("stream") is True

        extra: list[tuple[str, str]] = [("x-mock-attempt", str(attempt))]
        if model is not None:
            extra.append(("x-mock-model", model))

        stream_delay_ms: int | None = None
        chunks: int | None = None
        try:
            fault = self._header_fault(headers, attempt) or scripted or _NORMAL
            delay_ms = _int_header(headers, "x-mock-delay-ms", 0, MAX_DELAY_MS)
            stream_delay_ms = _int_header(headers, "x-mock-stream-delay-ms", 0, MAX_DELAY_MS)
            chunks = _int_header(headers, "x-mock-stream-chunks", 1, MAX_STREAM_CHUNKS)
        except ValueError as exc:
            fault = _NORMAL
            response: _Response | None = _Response(
                400, _error_body(str(exc), "invalid_request_error"), extra
            )
        else:
            if delay_ms is not None:
                fault = replace(fault, delay_ms=delay_ms)
            response = self._api_response(
                request=request,
                payload=payload,
                model=model,
                stream=stream,
                fault=fault,
                extra=extra,
            )

        # Recorded before the delay, so a test sees a request that is still being answered.
        status = 0 if fault.reset else (response.status if response else 200)
        self._record(request, conn, model=model, stream=stream, attempt=attempt, status=status)
        logger.info(
            "mock backend %s: %s %s model=%s attempt=%d -> %s",
            self.name,
            request.method,
            request.path,
            model,
            attempt,
            status or "reset",
        )
        if fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        if fault.reset:
            writer.transport.abort()
            return False
        if response is None:  # a streamed answer
            assert payload is not None
            http11 = request.version == "HTTP/1.1"
            await self._stream(
                writer,
                _StreamPlan(
                    model=model or self.models[0],
                    chars=_content_chars(payload["messages"]),
                    messages=len(payload["messages"]),
                    include_usage=_include_usage(payload),
                    chunks=chunks or self.stream_chunks,
                    delay_ms=self.stream_delay_ms if stream_delay_ms is None else stream_delay_ms,
                ),
                extra,
                keep_alive=keep_alive and http11,
                chunked=http11,
            )
            return keep_alive and http11
        if request.method == "HEAD":
            response.body = b""
        await self._send(writer, response, keep_alive=keep_alive)
        return keep_alive

    def _header_fault(self, headers: Mapping[str, str], attempt: int) -> Fault | None:
        """`x-mock-fail-<name>` (this backend only), else `x-mock-fail`; bounded by
        `x-mock-fail-attempts` when present. Raises ValueError on a bad value."""
        spec = headers.get(f"x-mock-fail-{self.name.lower()}")
        if spec is None:
            spec = headers.get("x-mock-fail")
        if spec is None:
            return None
        fault = Fault.parse(spec)
        limit = _int_header(headers, "x-mock-fail-attempts", 0, 1_000_000)
        if limit is not None and attempt > limit:
            return None
        return fault

    def _api_response(
        self,
        *,
        request: _Request,
        payload: dict[str, Any] | None,
        model: str | None,
        stream: bool,
        fault: Fault,
        extra: list[tuple[str, str]],
    ) -> _Response | None:
        """The answer to a `/v1/...` request; None for a streamed chat answer."""
        if fault.reset:
            return _Response(0)
        if fault.status != 200:
            if fault.retry_after is not None:
                extra.append(("retry-after", str(fault.retry_after)))
            kind = "rate_limit_error" if fault.status == 429 else "mock_fault"
            message = f"mock backend {self.name}: injected {fault.status}"
            return _Response(fault.status, _error_body(message, kind, fault.status), extra)
        if request.path == MODELS_PATH:
            if request.method not in ("GET", "HEAD"):
                return self._not_allowed("GET")
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": f"mock-{self.name}"}
                for m in self.models
            ]
            return _Response(200, _json({"object": "list", "data": data}), extra)
        if request.path != CHAT_PATH:
            body = _error_body(f"no route for {request.path}", "not_found_error")
            return _Response(404, body, extra)
        if request.method != "POST":
            return self._not_allowed("POST")
        if payload is None or not isinstance(payload.get("messages"), list):
            message = "body must be a JSON object with a messages list"
            return _Response(400, _error_body(message, "invalid_request_error"), extra)
        if self.strict_models and model is not None and model not in self.models:
            message = f"The model `{model}` does not exist on mock backend {self.name}."
            body = _error_body(message, "invalid_request_error", "model_not_found")
            return _Response(404, body, extra)
        if stream:
            return None
        answer_model = model or self.models[0]
        messages = payload["messages"]
        chars = _content_chars(messages)
        reply = self._reply(answer_model, len(messages), chars)
        completion = {
            "id": f"chatcmpl-mock-{self.name}-{next(self._completion_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(chars, reply),
        }
        return _Response(200, _json(completion), extra)

    def _reply(self, model: str, messages: int, chars: int) -> str:
        return (
            f"[{self.name}] mock answer from backend {self.name} for model {model}: "
            f"{messages} message(s), {chars} characters."
        )

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        plan: _StreamPlan,
        extra: list[tuple[str, str]],
        *,
        keep_alive: bool,
        chunked: bool,
    ) -> None:
        """SSE: a role event, the reply in `plan.chunks` pieces, a finish event, the usage event
        (only when `stream_options.include_usage`), `[DONE]`; `plan.delay_ms` between events."""
        reply = self._reply(plan.model, plan.messages, plan.chars)
        base = {
            "id": f"chatcmpl-mock-{self.name}-{next(self._completion_ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": plan.model,
        }
        usage_null = {"usage": None} if plan.include_usage else {}

        def choice(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
            entry = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [entry], **usage_null}

        events = [choice({"role": "assistant", "content": ""}, None)]
        events.extend(choice({"content": piece}, None) for piece in _split(reply, plan.chunks))
        events.append(choice({}, "stop"))
        if plan.include_usage:
            events.append({**base, "choices": [], "usage": _usage(plan.chars, reply)})
        payloads = [b"data: " + _json(e) + b"\n\n" for e in events]
        payloads.append(b"data: [DONE]\n\n")

        headers = [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("server", "cascade-mock-backend"),
            ("x-mock-backend", self.name),
            *extra,
        ]
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        writer.write(_head(200, headers, keep_alive))
        await writer.drain()
        for number, data in enumerate(payloads):
            if number and plan.delay_ms:
                await asyncio.sleep(plan.delay_ms / 1000)
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


@dataclass(frozen=True)
class _StreamPlan:
    model: str
    chars: int
    messages: int
    include_usage: bool
    chunks: int
    delay_ms: int


def _include_usage(payload: Mapping[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt_chars: int, reply: str) -> dict[str, int]:
    prompt = _tokens(prompt_chars)
    completion = _tokens(len(reply))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --------------------------------------------------------------------------------------------
# A backend in a thread, for synchronous tests


class MockBackendThread:
    """Runs a `MockBackend` on its own event loop in a daemon thread.

        with MockBackendThread(MockBackend("weak", ["qwen3-4b"])) as weak:
            url = weak.url
            weak.script(["503", "200"])
            ...
            assert weak.requests[-1].model == "qwen3-4b"

    `stop_backend()` closes the port while the thread lives on (connection refused);
    `start_backend()` binds the same port again.
    """

    def __init__(self, backend: MockBackend | None = None, *, timeout: float = 10.0) -> None:
        self.backend = backend if backend is not None else MockBackend()
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MockBackendThread:
        if self._loop is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop,
            args=(loop,),
            name=f"mock-backend-{self.backend.name}",
            daemon=True,
        )
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            self.call(self.backend.start())
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the backend's loop and wait (at most `timeout`) for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self.backend.running:
                self.call(self.backend.stop())
        finally:
            self._loop = self._thread = None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)

    def stop_backend(self) -> None:
        """Close the port (clients get "connection refused"); the thread keeps running."""
        self.call(self.backend.stop())

    def start_backend(self) -> None:
        """Listen again, on the same port."""
        self.call(self.backend.start())

    def __enter__(self) -> MockBackendThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Delegates to the backend (all thread-safe).

    @property
    def port(self) -> int:
        return self.backend.port

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.backend.requests

    def script(
        self, responses: Iterable[FaultSpec] = (), *, always: FaultSpec | None = None
    ) -> None:
        self.backend.script(responses, always=always)

    def reset(self) -> None:
        self.backend.reset()

    def clear_requests(self) -> None:
        self.backend.clear_requests()
