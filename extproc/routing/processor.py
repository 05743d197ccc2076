"""Per-request ext_proc logic, independent of the transport.

A `RequestProcessor` lives for one HTTP request (one ext_proc stream). The transport feeds it
`ProcessingRequest` messages in order, sends back exactly what `handle` returns, then calls
`after_answer`; when `done` turns true (after an immediate response) the transport stops reading.

Phases: AWAIT_HEADERS → AWAIT_BODY → DECIDED, or PASS_THROUGH for paths that are not
classified. Whatever arrives (trailers, response phases switched on by a per-route override,
a body without headers) gets the empty answer of its own kind, never an error.

Telemetry is off the decision path: the processor hands the observer one frozen record per phase
(`extproc.routing.observer`), and the decision's report waits until the answer has been handed
to the transport (`after_answer`). Only `started` runs before: its trace carries the propagation
headers the routed answer includes. Nothing only telemetry reads is computed unless the config
asks for it (prompt capture, retry excerpts, response processing).
"""

from __future__ import annotations

import enum
import logging
import time

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.snapshot import Snapshot
from extproc.core import headers
from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.classify import RULE_ERROR, RULE_UNPARSED, Decision, classify
from extproc.core.excerpt import retry_excerpt
from extproc.routing import gate_attempt, mutations
from extproc.routing.cache import HEADER as CACHE_HEADER
from extproc.routing.cache import CachePath
from extproc.routing.cache_store import CacheStore
from extproc.routing.capture import PairJoiner, PrimaryTap
from extproc.routing.choice import choose_classifier, fallback_decision
from extproc.routing.headermap import header_map
from extproc.routing.observer import (
    NO_TRACE,
    DecisionInfo,
    NullObserver,
    Observer,
    RequestInfo,
    ResponseInfo,
)
from extproc.routing.response import ResponseTracker

logger = logging.getLogger(__name__)

#: `rule` of a header-time decision (GET or an empty POST: no body will come).
RULE_NO_BODY = "no_body"


class Phase(enum.Enum):
    AWAIT_HEADERS = "await_headers"
    AWAIT_BODY = "await_body"
    DECIDED = "decided"
    PASS_THROUGH = "pass_through"


_EMPTY_INFO = RequestInfo()


class RequestProcessor:
    __slots__ = (
        "_body",
        "_cache",
        "_cascade_headers",
        "_finished",
        "_local",
        "_pending",
        "_response",
        "_tap",
        "decided",
        "done",
        "info",
        "observer",
        "pairs",
        "phase",
        "snapshot",
        "trace",
    )

    def __init__(
        self,
        snapshot: Snapshot,
        observer: Observer | None = None,
        cache: CacheStore | None = None,
        pairs: PairJoiner | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.observer: Observer = observer or NullObserver()
        #: this request's way through the response cache, when the config enables it
        self._cache = (
            CachePath(cache, snapshot.cache)
            if cache is not None and snapshot.cache.enabled
            else None
        )
        #: mirrored-pair capture (`capture:`); None when off
        self.pairs = pairs
        self._tap: PrimaryTap | None = None
        self.phase = Phase.AWAIT_HEADERS
        self.info = _EMPTY_INFO
        self.trace = NO_TRACE
        #: the decision and its telemetry record, once decided
        self.decided: DecisionInfo | None = None
        self.done = False
        self._body: bytearray | None = None
        self._cascade_headers: tuple[str, ...] = ()
        self._response: ResponseTracker | None = None
        self._finished = False
        #: the answer the server gave itself (a 400), reported after the rejection
        self._local: ResponseInfo | None = None
        #: a decision (or a rejection kind) to report in `after_answer`
        self._pending: DecisionInfo | str | None = None

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
            logger.exception("ext_proc %s handling failed (request %r)", kind, self.info.request_id)
            self.observer.classifier_failed(self.info)
        return mutations.EMPTY_BY_KIND.get(kind, mutations.EMPTY_REQUEST_HEADERS)

    @property
    def pending(self) -> bool:
        """Something to report once the last answer is written (`after_answer`)."""
        return self._pending is not None or (self._cache is not None and self._cache.pending)

    def after_answer(self) -> None:
        """Report what the last answer decided; the transport calls it once the answer is sent."""
        if self._cache is not None:
            self._cache.store()  # an answer completed: stored after its last chunk was answered
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if isinstance(pending, str):
            self.observer.rejected(pending, self.info, self.trace)
            pending = self.decided
        if pending is not None:
            self.observer.decided(self.info, pending, self.trace)
        local = self._local
        if local is not None:
            self._local = None
            self.observer.finished(self.info, self.decided, local, self.trace)

    def on_request_headers(self, message: pb.HttpHeaders) -> pb.ProcessingResponse:
        if self.phase is not Phase.AWAIT_HEADERS:
            return mutations.EMPTY_REQUEST_HEADERS
        snapshot = self.snapshot
        values = header_map(message.headers)
        path = values.get(headers.PATH, "")
        self._cascade_headers = tuple(name for name in values if name.startswith(headers.PREFIX))
        request_id = values.get(headers.REQUEST_ID, "")
        canary = snapshot.canary
        canary_key = (values.get(canary.key_header) or request_id) if canary is not None else ""
        if path.partition("?")[0] not in snapshot.server.paths:
            self.phase = Phase.PASS_THROUGH
            self.info = RequestInfo(path=path, request_id=request_id, headers=values)
            return mutations.EMPTY_REQUEST_HEADERS
        user = ""
        for name in snapshot.telemetry.user_key_headers:
            user = values.get(name, "")
            if user:
                break
        self.info = info = RequestInfo(
            path=path,
            method=values.get(headers.METHOD, ""),
            request_id=request_id,
            content_type=values.get(headers.CONTENT_TYPE, ""),
            canary_key=canary_key,
            user=user,
            started=time.perf_counter(),
            started_ns=time.time_ns(),
            headers=values,
        )
        self.trace = self.observer.started(info)
        if message.end_of_stream:
            # GET or an empty POST: no body message will follow, decide now.
            version = choose_classifier(snapshot, canary_key).version
            return self._routed(
                "request_headers", fallback_decision(snapshot, version, RULE_NO_BODY), 0.0
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
        return self._decide(body)

    def _collect(self, chunk: bytes) -> None:
        if self._body is None:
            self._body = bytearray()
        if len(self._body) <= self.snapshot.server.max_body_bytes:
            self._body += chunk

    def _spoofed(self) -> list[str]:
        owned: tuple[str, ...] = (headers.TIER, headers.CLASSIFIER, headers.REASON)
        if self._cache is not None:
            owned = (*owned, CACHE_HEADER)
        return [name for name in self._cascade_headers if name not in owned]

    def _routed(
        self,
        kind: str,
        decision: Decision,
        seconds: float,
        chat: ChatRequest | None = None,
        body: bytes | None = None,
        cache: str = "",
    ) -> pb.ProcessingResponse:
        self.phase = Phase.DECIDED
        self.decided = self._facts(decision, seconds, chat)
        if self.pairs is not None and chat is not None:
            self._tap = self.pairs.primary_tap(self.snapshot, self.info, decision, chat)
        if self._pending is None:
            self._pending = self.decided
        extra = (*self.trace.propagation, *gate_attempt.marker(self.snapshot, decision, chat))
        if cache:
            extra = (*extra, (CACHE_HEADER, cache))
        return mutations.routed(kind, decision, body=body, remove=self._spoofed(), extra=extra)

    def _facts(self, decision: Decision, seconds: float, chat: ChatRequest | None) -> DecisionInfo:
        if chat is None:
            return DecisionInfo(decision, seconds)
        telemetry = self.snapshot.telemetry
        retry = retry_excerpt(chat.messages) if telemetry.retry.enabled and self.info.user else ""
        prompt = chat.messages if telemetry.capture_prompts else None
        return DecisionInfo(decision, seconds, chat.model, retry, prompt)

    def _decide(self, body: bytes) -> pb.ProcessingResponse:
        snapshot = self.snapshot
        info = self.info
        started = time.perf_counter()
        classifier = choose_classifier(snapshot, info.canary_key)
        chat = parse_chat(body, snapshot.server.max_body_bytes)
        if not isinstance(chat, ChatRequest):
            self._pending = chat.kind
            if not chat.fail_open:
                self.done = True
                self.phase = Phase.DECIDED
                self._answered_locally(400)
                return mutations.immediate_error(
                    400, str(chat), code=chat.kind, details=f"cascade_{chat.kind}"
                )
            decision = fallback_decision(snapshot, classifier.version, RULE_UNPARSED)
            return self._routed("request_body", decision, time.perf_counter() - started)
        cache = ""
        if self._cache is not None:
            hit, cache = self._cache.look_up(chat, info, classifier.version)
            if hit is not None:  # answered from the cache: no classification, no upstream
                self.done = self._finished = True
                self.phase = Phase.DECIDED
                return hit
        try:
            decision = classify(chat, classifier)
            new_body = self._rewrite_model(chat, decision)
        except Exception:
            logger.exception(
                "classification failed; routing to %s (request %r)",
                snapshot.default_tier,
                info.request_id,
            )
            self.observer.classifier_failed(info)
            decision = fallback_decision(snapshot, classifier.version, RULE_ERROR)
            new_body = None
        seconds = time.perf_counter() - started
        return self._routed("request_body", decision, seconds, chat, new_body, cache)

    def _rewrite_model(self, chat: ChatRequest, decision: Decision) -> bytes | None:
        if not self.snapshot.server.rewrite_model:
            return None
        model = self.snapshot.tier(decision.tier).model
        if not model or chat.model == model:
            return None
        document = dict(chat.document)
        document["model"] = model
        return orjson.dumps(document)

    # -- response side ---------------------------------------------------------------------------

    def _tracker(self, request: pb.ProcessingRequest) -> ResponseTracker | None:
        """The response tracker of a classified request (attributes read from the first message)."""
        if self.phase is not Phase.DECIDED or self._finished:
            return None
        tracker = self._response
        if tracker is None:
            tracker = self._response = ResponseTracker(self.snapshot, request)
        return tracker

    def on_response_headers(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        tracker = self._tracker(request)
        if tracker is not None:
            tracker.on_headers(request.response_headers)
            if request.response_headers.end_of_stream:
                self._finish(tracker, complete=True)
        return mutations.EMPTY_RESPONSE_HEADERS

    def on_response_body(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        tracker = self._tracker(request)
        if tracker is not None:
            message = request.response_body
            tracker.on_body(message.body)
            if self._cache is not None:
                self._cache.feed(message.body)
            if self._tap is not None:
                self._tap.feed(message.body)
            if message.end_of_stream:
                self._finish(tracker, complete=True)
        return mutations.EMPTY_RESPONSE_BODY

    def _finish(self, tracker: ResponseTracker, *, complete: bool) -> None:
        self._finished = True
        self.after_answer()
        decided = self.decided
        tier = decided.decision.tier if decided is not None else ""
        response = tracker.facts(self.snapshot, tier, complete=complete)
        self.observer.finished(self.info, decided, response, self.trace)
        if self._cache is not None:
            streamed = tracker.meter.streamed
            self._cache.finished(response.status, complete, streamed, response.served_tier or tier)
        if self._tap is not None:
            self._tap.status = response.status
            self._tap.done(
                complete=complete,
                tokens_in=response.tokens_in,
                tokens_out=response.tokens_out,
                model=response.model,
            )

    def _answered_locally(self, status: int) -> None:
        """The server answers the client itself (no upstream): reported as finished."""
        self._finished = True
        self._local = ResponseInfo(status=status, complete=True, ended=time.perf_counter())

    def close(self) -> None:
        """The stream ended: report what has not been reported yet."""
        self.after_answer()
        decided = self.decided
        if self._finished or self.phase is not Phase.DECIDED or decided is None:
            return
        tracker = self._response
        if tracker is not None:
            self._finish(tracker, complete=False)
            if self._cache is not None:
                self._cache.store()
            return
        self._finished = True
        response = ResponseInfo(served_tier=decided.decision.tier, ended=time.perf_counter())
        self.observer.finished(self.info, decided, response, self.trace)
