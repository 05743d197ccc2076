"""`MockBackend`: one mock OpenAI-compatible backend on its own port, served by aiohttp."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from cascade_dev.mock import controls
from cascade_dev.mock.answers import error_body
from cascade_dev.mock.api import answer_api
from cascade_dev.mock.faults import MAX_DELAY_MS, MAX_STREAM_CHUNKS, FaultSpec
from cascade_dev.mock.judge import JUDGE_MODES
from cascade_dev.mock.state import BackendState, RecordedRequest
from cascade_dev.mock.wire import (
    BodyTooLarge,
    MockServer,
    RequestHead,
    json_response,
    open_listener,
    read_body,
)

__all__ = ["CONTROL_PREFIX", "HEALTH_PATH", "MockBackend"]

logger = logging.getLogger("cascade_dev.mock_backend")

HEALTH_PATH = "/healthz"
CONTROL_PREFIX = "/_mock/"
#: How long `stop()` waits for the handlers of the dropped connections to end.
_STOP_TIMEOUT = 5.0

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


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
        tls: ssl.SSLContext | None = None,
        path_prefix: str = "",
        max_body_bytes: int = 32 * 1024 * 1024,
        max_recorded: int = 10_000,
        judge: str | None = None,
    ) -> None:
        """`tls`: serve HTTPS with this server context (its `sni_callback` is replaced to record
        the SNI of each connection); `path_prefix`: the API lives under it, like a hosted
        provider's base path (`/openai` → `/openai/v1/chat/completions`); other paths get 404.
        """
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
        if path_prefix and (not path_prefix.startswith("/") or path_prefix.endswith("/")):
            raise ValueError("path_prefix must start with '/' and not end with one")
        self.name = name
        self.models = tuple(models)
        self.host = host
        #: The bound port after `start()`; kept after `stop()` so a restart binds it again.
        self.port = port
        self.stream_delay_ms = stream_delay_ms
        self.stream_chunks = stream_chunks
        self.strict_models = strict_models
        if judge is not None and judge not in JUDGE_MODES:
            raise ValueError(f"judge must be one of {', '.join(JUDGE_MODES)}")
        #: answer every chat request as a pairwise judge (cascade_dev.mock.judge), or not
        self.judge = judge
        self.max_body_bytes = max_body_bytes
        self.tls = tls
        self.path_prefix = path_prefix
        self.state = BackendState(max_recorded)
        self._completion_ids = itertools.count(1)
        self._runner: web.ServerRunner | None = None
        self._server: MockServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{self.path_prefix}"

    async def start(self) -> None:
        """Listen on `host:port` (port 0: a free port, then in `.port`)."""
        if self._runner is not None:
            raise RuntimeError(f"mock backend {self.name} is already running")
        listener = await open_listener(self.host, self.port)
        server = MockServer(self._handle)
        if self.tls is not None:
            server.serve_tls(self.tls)
        runner = web.ServerRunner(server, shutdown_timeout=_STOP_TIMEOUT)
        try:
            await runner.setup()
            await web.SockSite(runner, listener, ssl_context=self.tls).start()
        except BaseException:
            listener.close()
            await runner.cleanup()
            raise
        self._runner, self._server = runner, server
        self.port = listener.getsockname()[1]
        logger.info("mock backend %s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        """Close the listening port and every open connection (clients then see "refused")."""
        runner, server = self._runner, self._server
        if runner is None or server is None:
            return
        self._runner = self._server = None
        server.closing = True
        for site in list(runner.sites):
            await site.stop()  # the port is closed
        server.abort_all()  # idle, busy and streaming connections alike
        await runner.cleanup()  # waits for the handlers of the dropped connections
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
        self.state.script(responses, always=always)

    def script_state(self) -> dict[str, Any]:
        return self.state.script_state()

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        self.state.reset()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first (all but `/healthz` and `/_mock/...`)."""
        return self.state.requests

    def clear_requests(self) -> None:
        self.state.clear_requests()

    # -- serving ------------------------------------------------------------------------------

    def completion_id(self) -> str:
        return f"chatcmpl-mock-{self.name}-{next(self._completion_ids)}"

    def record(self, head: RequestHead, conn: int, *, body_length: int = 0, **fields: Any) -> None:
        self.state.record(
            connection=conn,
            method=head.method,
            path=head.target,
            headers=dict(head.headers),
            body_length=body_length,
            content_length=head.content_length,
            chunked=head.chunked,
            sni=head.sni,
            client_cert=head.client_cert,
            **fields,
        )

    def respond(
        self,
        request: web.BaseRequest,
        status: int,
        body: bytes,
        *,
        extra: Iterable[tuple[str, str]] = (),
        keep_alive: bool | None = None,
    ) -> web.Response:
        """A JSON answer; the connection stays open when the request allows and `keep_alive`
        is not False."""
        return json_response(
            status,
            body,
            backend=self.name,
            extra=extra,
            keep_alive=request.keep_alive if keep_alive is None else keep_alive,
            head=request.method == "HEAD",
        )

    def not_allowed(self, request: web.BaseRequest, allow: str) -> web.Response:
        body = error_body(f"method not allowed; use {allow}", "invalid_request_error")
        return self.respond(request, 405, body, extra=[("allow", allow)])

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Read the body (within the limit), then answer by path."""
        assert self._server is not None
        head = RequestHead.of(request)
        if self.tls is not None:
            sni, client_cert = self._server.tls_names(request)
            head = dataclasses.replace(head, sni=sni, client_cert=client_cert)
        raw_path = head.path
        own = raw_path == HEALTH_PATH or raw_path.startswith(CONTROL_PREFIX)
        if self.path_prefix and not own:
            if not raw_path.startswith(self.path_prefix + "/"):
                attempt = controls.attempt(head.headers)
                self.record(head, 0, model=None, stream=False, attempt=attempt, status=404)
                body = error_body(f"no route for {raw_path}", "not_found_error")
                return self.respond(request, 404, body, keep_alive=False)
            head = dataclasses.replace(head, base=self.path_prefix)
        limit = self.max_body_bytes
        too_large = error_body(f"body over {limit} bytes", "invalid_request_error")
        declared = head.content_length
        if not head.chunked and declared is not None and declared > limit:
            return self.respond(request, 413, too_large, keep_alive=False)
        expects = head.headers.get("expect", "").lower() == "100-continue"
        if expects and request.version == (1, 1) and (head.chunked or declared):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer's own head has not been sent yet
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            return self.respond(request, 413, too_large, keep_alive=False)
        except RequestPayloadError:  # e.g. a malformed chunked body
            body = error_body("malformed request body", "invalid_request_error")
            return self.respond(request, 400, body, keep_alive=False)

        conn = self._server.number(request.protocol)
        path = head.path
        if path.startswith("/v1/"):
            return await answer_api(self, request, head, body, conn)
        if path.startswith(CONTROL_PREFIX):
            return self._control(request, path.removeprefix(CONTROL_PREFIX), body)
        if path == HEALTH_PATH:
            if request.method not in ("GET", "HEAD"):
                return self.not_allowed(request, "GET")
            return self.respond(request, 200, orjson.dumps({"status": "ok", "backend": self.name}))
        attempt = controls.attempt(head.headers)
        self.record(
            head, conn, body_length=len(body), model=None, stream=False, attempt=attempt, status=404
        )
        return self.respond(request, 404, error_body(f"no route for {path}", "not_found_error"))

    def _control(self, request: web.BaseRequest, endpoint: str, body: bytes) -> web.Response:
        method = request.method
        if endpoint == "requests":
            if method != "GET":
                return self.not_allowed(request, "GET")
            records = [r.as_dict() for r in self.requests]
            return self.respond(
                request, 200, orjson.dumps({"backend": self.name, "requests": records})
            )
        if endpoint == "script":
            if method not in ("GET", "POST"):
                return self.not_allowed(request, "GET, POST")
            if method == "POST":
                try:
                    self.state.script_from_json(body)
                except ValueError as exc:
                    body = error_body(str(exc), "invalid_request_error")
                    return self.respond(request, 400, body)
            state = {"backend": self.name, **self.script_state()}
            return self.respond(request, 200, orjson.dumps(state))
        if endpoint == "reset":
            if method != "POST":
                return self.not_allowed(request, "POST")
            self.reset()
            return self.respond(request, 200, orjson.dumps({"backend": self.name, "reset": True}))
        body = error_body(f"no control endpoint {CONTROL_PREFIX}{endpoint}", "not_found_error")
        return self.respond(request, 404, body)
