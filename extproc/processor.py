"""Per-request ext_proc logic, independent of the transport.

A `RequestProcessor` lives for one HTTP request (one ext_proc stream). The transport feeds it
`ProcessingRequest` messages in order and sends back exactly what `handle` returns; when `done`
turns true (after an immediate response) the transport stops reading.

Phases: AWAIT_HEADERS → AWAIT_BODY → DECIDED, or PASS_THROUGH for paths that are not
classified. Whatever arrives (trailers, response phases switched on by a per-route override,
a body without headers) gets the empty answer of its own kind, never an error.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Protocol

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc import headers, mutations
from extproc.chat import ChatRequest, parse_chat
from extproc.classify import (
    RULE_ERROR,
    RULE_UNPARSED,
    Decision,
    choose_classifier,
    classify,
    fallback_decision,
)
from extproc.config import Snapshot

logger = logging.getLogger(__name__)

#: `rule` of a header-time decision (GET or an empty POST: no body will come).
RULE_NO_BODY = "no_body"


class Phase(enum.Enum):
    AWAIT_HEADERS = "await_headers"
    AWAIT_BODY = "await_body"
    DECIDED = "decided"
    PASS_THROUGH = "pass_through"


class Observer(Protocol):
    """What the processor reports; telemetry implements it, tests count with it."""

    def decided(self, decision: Decision, seconds: float, request: RequestInfo) -> None: ...

    def rejected(self, kind: str, request: RequestInfo) -> None: ...

    def classifier_failed(self, request: RequestInfo) -> None: ...


class NullObserver:
    def decided(self, decision: Decision, seconds: float, request: RequestInfo) -> None:
        pass

    def rejected(self, kind: str, request: RequestInfo) -> None:
        pass

    def classifier_failed(self, request: RequestInfo) -> None:
        pass


class RequestInfo:
    """Facts about the HTTP request taken from its headers (never the prompt)."""

    __slots__ = (
        "canary_key",
        "cascade_headers",
        "content_type",
        "headers",
        "method",
        "path",
        "request_id",
    )

    def __init__(self) -> None:
        self.path = ""
        self.method = ""
        self.request_id = ""
        self.content_type = ""
        self.canary_key = ""
        #: client-sent x-cascade-* header names (removed from the request)
        self.cascade_headers: list[str] = []
        #: every request header, lower-cased names, for observers that need more
        self.headers: dict[str, str] = {}


def header_map(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    """Envoy sends values in `raw_value` (bytes); older configs in `value`."""
    result: dict[str, str] = {}
    for header in header_map.headers:
        raw = header.raw_value
        result[header.key.lower()] = raw.decode("utf-8", "replace") if raw else header.value
    return result


class RequestProcessor:
    __slots__ = ("_body", "done", "info", "observer", "phase", "snapshot")

    def __init__(self, snapshot: Snapshot, observer: Observer | None = None) -> None:
        self.snapshot = snapshot
        self.observer: Observer = observer or NullObserver()
        self.phase = Phase.AWAIT_HEADERS
        self.info = RequestInfo()
        self.done = False
        self._body: bytearray | None = None

    def handle(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        """The answer to one message; never raises (a bug answers empty, logged and counted)."""
        kind = request.WhichOneof("request") or ""
        try:
            if kind == "request_headers":
                return self.on_request_headers(request.request_headers)
            if kind == "request_body":
                return self.on_request_body(request.request_body)
        except Exception:
            logger.exception("ext_proc %s handling failed (request %s)", kind, self.info.request_id)
            self.observer.classifier_failed(self.info)
        return mutations.EMPTY_BY_KIND.get(kind, mutations.EMPTY_REQUEST_HEADERS)

    def on_request_headers(self, message: pb.HttpHeaders) -> pb.ProcessingResponse:
        if self.phase is not Phase.AWAIT_HEADERS:
            return mutations.EMPTY_REQUEST_HEADERS
        info = self.info
        values = header_map(message.headers)
        info.headers = values
        info.path = values.get(headers.PATH, "")
        info.method = values.get(headers.METHOD, "")
        info.request_id = values.get(headers.REQUEST_ID, "")
        info.content_type = values.get(headers.CONTENT_TYPE, "")
        info.cascade_headers = [name for name in values if name.startswith(headers.PREFIX)]
        canary = self.snapshot.canary
        if canary is not None:
            info.canary_key = values.get(canary.key_header) or info.request_id
        if info.path.partition("?")[0] not in self.snapshot.server.paths:
            self.phase = Phase.PASS_THROUGH
            return mutations.EMPTY_REQUEST_HEADERS
        if message.end_of_stream:
            # GET or an empty POST: no body message will follow, decide now.
            self.phase = Phase.DECIDED
            decision = fallback_decision(self.snapshot, self._version(), RULE_NO_BODY)
            self.observer.decided(decision, 0.0, info)
            return mutations.routed("request_headers", decision, remove=self._spoofed())
        self.phase = Phase.AWAIT_BODY
        return mutations.EMPTY_REQUEST_HEADERS

    def on_request_body(self, message: pb.HttpBody) -> pb.ProcessingResponse:
        if self.phase is not Phase.AWAIT_BODY:
            return mutations.EMPTY_REQUEST_BODY
        if not message.end_of_stream:
            # Only with a STREAMED body mode (routing then cannot follow the decision reliably):
            # collect up to the limit and answer each chunk at once.
            self._collect(message.body)
            return mutations.EMPTY_REQUEST_BODY
        body = message.body
        if self._body is not None:
            self._collect(body)
            body = bytes(self._body)
            self._body = None
        self.phase = Phase.DECIDED
        return self._decide(body)

    def _collect(self, chunk: bytes) -> None:
        if self._body is None:
            self._body = bytearray()
        if len(self._body) <= self.snapshot.server.max_body_bytes:
            self._body += chunk

    def _version(self) -> str:
        return choose_classifier(self.snapshot, self.info.canary_key).version

    def _spoofed(self) -> list[str]:
        owned = (headers.TIER, headers.CLASSIFIER, headers.REASON)
        return [name for name in self.info.cascade_headers if name not in owned]

    def _decide(self, body: bytes) -> pb.ProcessingResponse:
        snapshot = self.snapshot
        info = self.info
        started = time.perf_counter()
        classifier = choose_classifier(snapshot, info.canary_key)
        chat = parse_chat(body, snapshot.server.max_body_bytes)
        if not isinstance(chat, ChatRequest):
            if not chat.fail_open:
                self.done = True
                self.observer.rejected(chat.kind, info)
                return mutations.immediate_error(
                    400, str(chat), code=chat.kind, details=f"cascade_{chat.kind}"
                )
            self.observer.rejected(chat.kind, info)
            decision = fallback_decision(snapshot, classifier.version, RULE_UNPARSED)
            self.observer.decided(decision, time.perf_counter() - started, info)
            return mutations.routed("request_body", decision, remove=self._spoofed())
        try:
            decision = classify(chat, classifier)
            new_body = self._rewrite_model(chat, decision)
        except Exception:
            logger.exception(
                "classification failed; routing to %s (request %s)",
                snapshot.default_tier,
                info.request_id,
            )
            self.observer.classifier_failed(info)
            decision = fallback_decision(snapshot, classifier.version, RULE_ERROR)
            new_body = None
        self.observer.decided(decision, time.perf_counter() - started, info)
        return mutations.routed("request_body", decision, body=new_body, remove=self._spoofed())

    def _rewrite_model(self, chat: ChatRequest, decision: Decision) -> bytes | None:
        if not self.snapshot.server.rewrite_model:
            return None
        model = self.snapshot.tier(decision.tier).model
        if not model or chat.model == model:
            return None
        document = dict(chat.document)
        document["model"] = model
        return orjson.dumps(document)
