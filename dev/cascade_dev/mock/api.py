"""The OpenAI-compatible API of a mock backend: every request under `/v1/`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from cascade_dev.mock import answers, controls
from cascade_dev.mock.answers import Reply, error_body
from cascade_dev.mock.faults import NORMAL, Fault
from cascade_dev.mock.judge import judge_reply
from cascade_dev.mock.wire import RequestHead, json_response, stream_response

if TYPE_CHECKING:
    from cascade_dev.mock.server import MockBackend

__all__ = ["CHAT_PATH", "MODELS_PATH", "answer_api"]

logger = logging.getLogger("cascade_dev.mock_backend")

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"


def _json_object(body: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        loaded = orjson.loads(body)
        return loaded if isinstance(loaded, dict) else None
    return None


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class _Answer:
    """One `/v1/...` request being answered."""

    def __init__(
        self, backend: MockBackend, request: web.BaseRequest, head: RequestHead, body: bytes
    ) -> None:
        self.backend = backend
        self.request = request
        self.head = head
        self.keep_alive = request.keep_alive
        self.payload = _json_object(body) if head.path == CHAT_PATH and body else None
        raw_model = self.payload.get("model") if self.payload is not None else None
        self.model = raw_model if isinstance(raw_model, str) and raw_model else None
        self.stream = self.payload is not None and self.payload.get("stream") is True
        self.attempt = controls.attempt(head.headers)
        self.extra: list[tuple[str, str]] = [("x-mock-attempt", str(self.attempt))]
        if self.model is not None:
            self.extra.append(("x-mock-model", self.model))

    def json(self, status: int, body: bytes) -> web.Response:
        return json_response(
            status,
            body,
            backend=self.backend.name,
            extra=self.extra,
            keep_alive=self.keep_alive,
            head=self.request.method == "HEAD",
        )

    def respond(self, fault: Fault) -> web.Response | Reply:
        """The answer to the request: a complete response, or the `Reply` to build (a chat
        answer, sent as JSON or streamed). Raises ValueError for a bad `top_logprobs`."""
        backend, path, method = self.backend, self.head.path, self.request.method
        if fault.status != 200:
            if fault.retry_after is not None:
                self.extra.append(("retry-after", str(fault.retry_after)))
            kind = "rate_limit_error" if fault.status == 429 else "mock_fault"
            message = f"mock backend {backend.name}: injected {fault.status}"
            return self.json(fault.status, error_body(message, kind, fault.status))
        if path == MODELS_PATH:
            if method not in ("GET", "HEAD"):
                return backend.not_allowed(self.request, "GET")
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": f"mock-{backend.name}"}
                for m in backend.models
            ]
            return self.json(200, orjson.dumps({"object": "list", "data": data}))
        if path != CHAT_PATH:
            return self.json(404, error_body(f"no route for {path}", "not_found_error"))
        if method != "POST":
            return backend.not_allowed(self.request, "POST")
        payload = self.payload
        if payload is None or not isinstance(payload.get("messages"), list):
            message = "body must be a JSON object with a messages list"
            return self.json(400, error_body(message, "invalid_request_error"))
        if backend.strict_models and self.model is not None and self.model not in backend.models:
            message = f"The model `{self.model}` does not exist on mock backend {backend.name}."
            body = error_body(message, "invalid_request_error", "model_not_found")
            return self.json(404, body)
        top = controls.top_logprobs(payload)
        messages = payload["messages"]
        if backend.judge is not None and fault.content is None and fault.refusal is None:
            return replace(judge_reply(messages, backend.judge), top_logprobs=top)
        text = fault.refusal if fault.refusal is not None else fault.content
        if text is None:
            model = self.model or backend.models[0]
            text = answers.default_text(
                backend.name, model, len(messages), answers.content_chars(messages)
            )
        return Reply(
            text=text,
            refusal=fault.refusal is not None,
            finish_reason=fault.finish_reason or "stop",
            top_logprobs=top,
        )

    async def send(self, reply: Reply, stream_delay_ms: int, chunks: int) -> web.StreamResponse:
        backend = self.backend
        assert self.payload is not None
        common: dict[str, Any] = {
            "completion_id": backend.completion_id(),
            "created": int(time.time()),
            "model": self.model or backend.models[0],
            "reply": reply,
            "prompt_chars": answers.content_chars(self.payload["messages"]),
        }
        if not self.stream:
            return self.json(200, orjson.dumps(answers.completion(**common)))
        events = answers.stream_events(
            **common, chunks=chunks, include_usage=_include_usage(self.payload)
        )
        payloads = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
        payloads.append(b"data: [DONE]\n\n")
        http11 = self.request.version >= (1, 1)
        response = stream_response(
            backend=backend.name, extra=self.extra, keep_alive=self.keep_alive and http11
        )
        try:
            await response.prepare(self.request)
            for number, data in enumerate(payloads):
                if number and stream_delay_ms:
                    await asyncio.sleep(stream_delay_ms / 1000)
                await response.write(data)
            await response.write_eof()
        except ConnectionError:  # the client went away in the middle of the stream
            pass
        return response


async def answer_api(
    backend: MockBackend, request: web.BaseRequest, head: RequestHead, body: bytes, conn: int
) -> web.StreamResponse:
    """Answer one `/v1/...` request: every one consumes a script entry and is recorded (before
    any delay, so a test sees a request that is still being answered)."""
    answer = _Answer(backend, request, head, body)
    scripted = backend.state.next_fault()
    chunks = stream_delay_ms = None
    result: web.Response | Reply | None
    try:
        plan = controls.request_controls(
            head.headers, backend=backend.name, attempt=answer.attempt, scripted=scripted
        )
        fault, stream_delay_ms, chunks = plan.fault, plan.stream_delay_ms, plan.stream_chunks
        result = None if fault.reset else answer.respond(fault)
    except ValueError as exc:
        fault = NORMAL
        result = answer.json(400, error_body(str(exc), "invalid_request_error"))

    status = result.status if isinstance(result, web.Response) else 200
    if fault.reset:
        status = 0
    backend.record(
        head,
        conn,
        body_length=len(body),
        model=answer.model,
        stream=answer.stream,
        attempt=answer.attempt,
        status=status,
    )
    logger.info(
        "mock backend %s: %s %s model=%s attempt=%d -> %s",
        backend.name,
        head.method,
        head.path,
        answer.model,
        answer.attempt,
        status or "reset",
    )
    if fault.delay_ms:
        await asyncio.sleep(fault.delay_ms / 1000)
    if result is None:  # a reset
        if request.transport is not None:
            request.transport.abort()
        return web.Response()  # never sent: the connection is gone
    if status == 200 and fault.ttfb_ms:
        await asyncio.sleep(fault.ttfb_ms / 1000)
    if isinstance(result, Reply):
        delay = backend.stream_delay_ms if stream_delay_ms is None else stream_delay_ms
        return await answer.send(result, delay, chunks or backend.stream_chunks)
    return result
