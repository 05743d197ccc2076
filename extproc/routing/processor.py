"""Per-request ext_proc logic, independent of the transport.

A `RequestProcessor` lives for one HTTP request (one ext_proc stream). The transport feeds it
`ProcessingRequest` messages in order and sends back exactly what `handle` returns; when `done`
turns true (after an immediate response) the transport stops reading.

Phases: AWAIT_HEADERS → AWAIT_BODY → DECIDED, or PASS_THROUGH for paths that are not
classified. Whatever arrives (trailers, response phases switched on by a per-route override,
a body without headers) gets the empty answer of its own kind, never an error.

Response side (when Envoy sends it, `telemetry.response_processing`): the first response message
carries Envoy's attributes (status, cluster, the upstream host's metadata naming its tier); each
body chunk is answered at once with an empty `BodyResponse` after being fed to a `ResponseMeter`
(first chunk time, `usage`). The observer hears about the request once more, in `finished`, when
the answer ended or the stream closed.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from typing import Protocol

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.snapshot import Snapshot
from extproc.core import headers
from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.classify import (
    RULE_ERROR,
    RULE_UNPARSED,
    Decision,
    classify,
)
from extproc.routing import mutations
from extproc.routing.choice import choose_classifier, fallback_decision
from extproc.routing.usage import ResponseMeter

logger = logging.getLogger(__name__)

#: `rule` of a header-time decision (GET or an empty POST: no body will come).
RULE_NO_BODY = "no_body"


class Phase(enum.Enum):
    AWAIT_HEADERS = "await_headers"
    AWAIT_BODY = "await_body"
    DECIDED = "decided"
    PASS_THROUGH = "pass_through"


#: Key of Envoy's attribute Struct in `ProcessingRequest.attributes`.
ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
#: What `cascade render envoy` asks Envoy to send with the first response message.
RESPONSE_ATTRIBUTES = (
    "response.code",
    "xds.cluster_name",
    "xds.upstream_host_metadata",
    "upstream.address",
)
_HOST_TIER = re.compile(r'key: "tier" value \{ string_value: "([^"\\]*)" \}')


class Observer(Protocol):
    """What the processor reports; telemetry implements it, tests count with it.

    Every method runs on the answer path: implementations do constant, small work and hand
    anything slow (exports, files, Redis) to the background.
    """

    def started(self, request: RequestInfo) -> None: ...

    def decided(self, decision: Decision, seconds: float, request: RequestInfo) -> None: ...

    def propagation(self, request: RequestInfo) -> list[tuple[str, str]]: ...

    def rejected(self, kind: str, request: RequestInfo) -> None: ...

    def classifier_failed(self, request: RequestInfo) -> None: ...

    def fell_back(self, from_tier: str, to_tier: str, request: RequestInfo) -> None:
        """An attempt went to `to_tier` although `from_tier` was decided (upstream role)."""
        ...

    def finished(self, request: RequestInfo, response: ResponseInfo) -> None: ...


class NullObserver:
    def started(self, request: RequestInfo) -> None:
        pass

    def decided(self, decision: Decision, seconds: float, request: RequestInfo) -> None:
        pass

    def propagation(self, request: RequestInfo) -> list[tuple[str, str]]:
        return []

    def rejected(self, kind: str, request: RequestInfo) -> None:
        pass

    def classifier_failed(self, request: RequestInfo) -> None:
        pass

    def fell_back(self, from_tier: str, to_tier: str, request: RequestInfo) -> None:
        pass

    def finished(self, request: RequestInfo, response: ResponseInfo) -> None:
        pass


class RequestInfo:
    """Facts about the HTTP request taken from its headers (never the prompt)."""

    __slots__ = (
        "canary_key",
        "cascade_headers",
        "content_type",
        "decision",
        "headers",
        "method",
        "model",
        "path",
        "prompt",
        "request_id",
        "retry_text",
        "started",
        "started_ns",
        "trace",
        "user",
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
        #: `time.perf_counter()` / `time.time_ns()` when the request headers arrived
        self.started = 0.0
        self.started_ns = 0
        self.decision: Decision | None = None
        #: raw value of the first `telemetry.user_key_headers` present ("" = anonymous);
        #: observers keep only a hash of it
        self.user = ""
        #: the `model` the client asked for
        self.model = ""
        #: a short excerpt of the last user message, for retry-pattern similarity (memory only)
        self.retry_text = ""
        #: (role, text) of every message, only when `telemetry.capture_prompts` is on
        self.prompt: tuple[tuple[str, str], ...] | None = None
        #: the observer's per-request handle (a span), opaque to the processor
        self.trace: object = None


class ResponseInfo:
    """What the response side saw of one answer."""

    __slots__ = (
        "cluster",
        "complete",
        "ended",
        "first_chunk",
        "meter",
        "served_tier",
        "status",
        "upstream",
    )

    def __init__(self, max_bytes: int = 1024 * 1024) -> None:
        #: HTTP status; 0 when no response message arrived (response processing off)
        self.status = 0
        self.cluster = ""
        #: the tier whose backend answered (after a fallback: not the decided one)
        self.served_tier = ""
        self.upstream = ""
        #: `time.perf_counter()` of the first body chunk and of the end, None when not seen
        self.first_chunk: float | None = None
        self.ended: float | None = None
        #: True when the body ended normally (end_of_stream), False when the stream broke off
        self.complete = False
        self.meter = ResponseMeter(max_bytes)

    @property
    def observed(self) -> bool:
        return self.status != 0 or self.first_chunk is not None


def header_map(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    """Envoy sends values in `raw_value` (bytes); older configs in `value`."""
    result: dict[str, str] = {}
    for header in header_map.headers:
        raw = header.raw_value
        result[header.key.lower()] = raw.decode("utf-8", "replace") if raw else header.value
    return result


class RequestProcessor:
    __slots__ = ("_body", "_finished", "done", "info", "observer", "phase", "response", "snapshot")

    def __init__(self, snapshot: Snapshot, observer: Observer | None = None) -> None:
        self.snapshot = snapshot
        self.observer: Observer = observer or NullObserver()
        self.phase = Phase.AWAIT_HEADERS
        self.info = RequestInfo()
        self.done = False
        self._body: bytearray | None = None
        self.response: ResponseInfo | None = None
        self._finished = False

    def handle(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        """The answer to one message; never raises (a bug answers empty, logged and counted)."""
        kind = request.WhichOneof("request") or ""
        try:
            if kind == "request_headers":
                return self.on_request_headers(request.request_headers)
            if kind == "request_body":
                return self.on_request_body(request.request_body)
            if kind == "response_body":
                return self.on_response_body(request)
            if kind == "response_headers":
                return self.on_response_headers(request)
        except Exception:
            logger.exception("ext_proc %s handling failed (request %s)", kind, self.info.request_id)
            self.observer.classifier_failed(self.info)
        return mutations.EMPTY_BY_KIND.get(kind, mutations.EMPTY_REQUEST_HEADERS)

    def on_request_headers(self, message: pb.HttpHeaders) -> pb.ProcessingResponse:
        if self.phase is not Phase.AWAIT_HEADERS:
            return mutations.EMPTY_REQUEST_HEADERS
        info = self.info
        info.started = time.perf_counter()
        info.started_ns = time.time_ns()
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
        for name in self.snapshot.telemetry.user_key_headers:
            user = values.get(name)
            if user:
                info.user = user
                break
        self.observer.started(info)
        if message.end_of_stream:
            # GET or an empty POST: no body message will follow, decide now.
            self.phase = Phase.DECIDED
            decision = fallback_decision(self.snapshot, self._version(), RULE_NO_BODY)
            info.decision = decision
            self.observer.decided(decision, 0.0, info)
            return mutations.routed(
                "request_headers",
                decision,
                remove=self._spoofed(),
                extra=self.observer.propagation(info),
            )
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
                self._answered_locally(400)
                return mutations.immediate_error(
                    400, str(chat), code=chat.kind, details=f"cascade_{chat.kind}"
                )
            self.observer.rejected(chat.kind, info)
            decision = fallback_decision(snapshot, classifier.version, RULE_UNPARSED)
            info.decision = decision
            self.observer.decided(decision, time.perf_counter() - started, info)
            return mutations.routed(
                "request_body",
                decision,
                remove=self._spoofed(),
                extra=self.observer.propagation(info),
            )
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
        info.decision = decision
        info.model = chat.model
        self._keep_text(chat)
        self.observer.decided(decision, time.perf_counter() - started, info)
        return mutations.routed(
            "request_body",
            decision,
            body=new_body,
            remove=self._spoofed(),
            extra=self.observer.propagation(info),
        )

    def _keep_text(self, chat: ChatRequest) -> None:
        telemetry = self.snapshot.telemetry
        if telemetry.capture_prompts:
            self.info.prompt = chat.messages
        if telemetry.retry.enabled and self.info.user:
            self.info.retry_text = retry_excerpt(chat.messages)

    # -- response side ---------------------------------------------------------------------------

    def _response(self, request: pb.ProcessingRequest) -> ResponseInfo | None:
        """The response record of a classified request (attributes read from the first message)."""
        if self.phase is not Phase.DECIDED or self._finished:
            return None
        response = self.response
        if response is None:
            response = self.response = ResponseInfo(self.snapshot.telemetry.max_response_bytes)
            if ATTRIBUTES_KEY in request.attributes:
                self._read_attributes(response, request.attributes[ATTRIBUTES_KEY])
        return response

    def _read_attributes(self, response: ResponseInfo, attributes: object) -> None:
        fields = attributes.fields  # type: ignore[attr-defined]
        if "response.code" in fields:
            response.status = int(fields["response.code"].number_value)
        if "xds.cluster_name" in fields:
            response.cluster = fields["xds.cluster_name"].string_value
        if "upstream.address" in fields:
            response.upstream = fields["upstream.address"].string_value
        if "xds.upstream_host_metadata" in fields:
            found = _HOST_TIER.search(fields["xds.upstream_host_metadata"].string_value)
            if found and found.group(1) in self.snapshot.tier_names:
                response.served_tier = found.group(1)

    def on_response_headers(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        response = self._response(request)
        if response is not None:
            values = header_map(request.response_headers.headers)
            status = values.get(headers.STATUS, "")
            if status.isdigit():
                response.status = int(status)
            if not response.cluster:
                response.cluster = values.get(headers.SERVED_CLUSTER, "")
            if request.response_headers.end_of_stream:
                self._finish(response, complete=True)
        return mutations.EMPTY_RESPONSE_HEADERS

    def on_response_body(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        response = self._response(request)
        if response is not None:
            message = request.response_body
            if response.first_chunk is None and message.body:
                response.first_chunk = time.perf_counter()
            response.meter.feed(message.body)
            if message.end_of_stream:
                self._finish(response, complete=True)
        return mutations.EMPTY_RESPONSE_BODY

    def _finish(self, response: ResponseInfo, *, complete: bool) -> None:
        self._finished = True
        response.ended = time.perf_counter()
        response.complete = complete
        if complete:
            response.meter.end()
        if not response.served_tier:
            response.served_tier = self._tier_of_cluster(response.cluster)
        self.observer.finished(self.info, response)

    def _tier_of_cluster(self, cluster: str) -> str:
        """`tier_<name>` clusters name their tier; anything else: the decided tier."""
        if cluster.startswith("tier_") and cluster[5:] in self.snapshot.tier_names:
            return cluster[5:]
        decision = self.info.decision
        return decision.tier if decision is not None else ""

    def _answered_locally(self, status: int) -> None:
        """The server answered the client itself (no upstream): report it as finished."""
        response = ResponseInfo(0)
        response.status = status
        response.complete = True
        response.ended = time.perf_counter()
        self._finished = True
        self.observer.finished(self.info, response)

    def close(self) -> None:
        """The stream ended: report a decided request that has not been reported yet."""
        if self._finished or self.phase is not Phase.DECIDED or self.info.decision is None:
            return
        response = self.response or ResponseInfo(0)
        self._finish(response, complete=False)

    def _rewrite_model(self, chat: ChatRequest, decision: Decision) -> bytes | None:
        if not self.snapshot.server.rewrite_model:
            return None
        model = self.snapshot.tier(decision.tier).model
        if not model or chat.model == model:
            return None
        document = dict(chat.document)
        document["model"] = model
        return orjson.dumps(document)


#: Characters of the last user message kept for retry similarity (head and tail halves).
RETRY_EXCERPT = 512


def retry_excerpt(messages: tuple[tuple[str, str], ...]) -> str:
    """The last user message, whitespace-collapsed, at most `RETRY_EXCERPT` characters."""
    for role, text in reversed(messages):
        if role == "user" and text:
            cut = text
            if len(cut) > 4 * RETRY_EXCERPT:
                cut = cut[: 2 * RETRY_EXCERPT] + " " + cut[-2 * RETRY_EXCERPT :]
            cut = " ".join(cut.split())
            if len(cut) > RETRY_EXCERPT:
                half = RETRY_EXCERPT // 2
                cut = cut[:half] + " " + cut[-half:]
            return cut
    return ""
