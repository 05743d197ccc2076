"""`cascade.v1.Cascade`: Classify and SubmitFeedback, on the same gRPC port as ext_proc.

protos/cascade/v1/cascade.proto defines the service; the generated code is in `extproc/_pb`.
`CascadeApi` is transport-neutral (request message and metadata in, response message out or an
`ApiError` with a gRPC status); `GrpcServicer` and `h2_methods` adapt it to the two transports.
Every call needs a caller token (`extproc.services.auth`); feedback is limited per caller,
accepted only for a request the server has seen, and once per request.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from extproc._pb.cascade.v1 import cascade_pb2 as pb
from extproc._pb.cascade.v1 import cascade_pb2_grpc as pb_grpc
from extproc.config.snapshot import Snapshot
from extproc.core.chat import ChatRequest
from extproc.core.classify import classify
from extproc.core.excerpt import retry_excerpt
from extproc.routing.cache_store import CacheStore
from extproc.routing.choice import choose_classifier
from extproc.routing.observer import DecisionInfo, RequestInfo, ResponseInfo
from extproc.services.auth import Authenticator, RateLimiter
from extproc.telemetry.misroute import FALSE_NEGATIVE, FALSE_POSITIVE
from extproc.telemetry.recorder import Recorder
from extproc.transport.h2.frames import GrpcError

SERVICE = "cascade.v1.Cascade"
CLASSIFY_PATH = "/cascade.v1.Cascade/Classify"
MAX_MESSAGES = 10_000
MAX_COMMENT = 4_000
MAX_REQUEST_ID = 256
#: Defaults of the per-caller limits (`cascade serve --api-feedback-rate`, `--api-classify-rate`).
FEEDBACK_RATE, FEEDBACK_BURST = 5.0, 20.0
CLASSIFY_RATE, CLASSIFY_BURST = 200.0, 400.0
#: Request ids whose feedback was recorded, remembered to refuse a second one (per replica).
FEEDBACK_MEMORY = 100_000

# gRPC status codes (grpc.StatusCode values), shared by both transports
INVALID_ARGUMENT = 3
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNAUTHENTICATED = 16
_STATUS = {code.value[0]: code for code in grpc.StatusCode}

Message = TypeVar("Message")

_SUSPICION = {
    "": pb.SUSPICION_NONE,
    FALSE_NEGATIVE: pb.SUSPICION_FALSE_NEGATIVE,
    FALSE_POSITIVE: pb.SUSPICION_FALSE_POSITIVE,
}


class ApiError(Exception):
    """A refused call: a gRPC status code and a message that never echoes caller input."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CascadeApi:
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        recorder: Recorder,
        auth: Authenticator | None,
        *,
        feedback_limit: RateLimiter | None = None,
        classify_limit: RateLimiter | None = None,
        cache: CacheStore | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._cache = cache
        self._recorder = recorder
        self._auth = auth
        self._feedback_limit = feedback_limit or RateLimiter(FEEDBACK_RATE, FEEDBACK_BURST)
        self._classify_limit = classify_limit or RateLimiter(CLASSIFY_RATE, CLASSIFY_BURST)
        self._answered: OrderedDict[str, None] = OrderedDict()

    def _admit(self, method: str, metadata: Mapping[str, str], limit: RateLimiter) -> str:
        refused = self._recorder.metrics.api_refused
        if self._auth is None:
            refused.labels(method, "disabled").inc()
            raise ApiError(UNAUTHENTICATED, "cascade.v1 is disabled: start with --api-tokens")
        caller = self._auth.caller(metadata)
        if caller is None:
            refused.labels(method, "unauthenticated").inc()
            raise ApiError(UNAUTHENTICATED, "a valid 'authorization: Bearer <token>' is required")
        if not limit.allow(caller):
            refused.labels(method, "rate_limited").inc()
            raise ApiError(RESOURCE_EXHAUSTED, "rate limit exceeded; retry later")
        return caller

    def classify(
        self, request: pb.ClassifyRequest, metadata: Mapping[str, str]
    ) -> pb.ClassifyResponse:
        self._admit("Classify", metadata, self._classify_limit)
        snapshot = self._snapshot()
        if len(request.messages) > MAX_MESSAGES:
            raise ApiError(INVALID_ARGUMENT, "too many messages")
        total = sum(len(m.content) for m in request.messages)
        if total > snapshot.server.max_body_bytes:
            raise ApiError(
                INVALID_ARGUMENT, f"messages exceed {snapshot.server.max_body_bytes} characters"
            )
        if request.classifier:
            classifier = snapshot.classifiers.get(request.classifier)
            if classifier is None:
                raise ApiError(
                    INVALID_ARGUMENT,
                    "unknown classifier; configured: " + ", ".join(snapshot.classifiers),
                )
        else:
            classifier = choose_classifier(snapshot, request.key)
        messages = tuple((m.role, m.content) for m in request.messages)
        chat = ChatRequest(messages=messages, model="", document={})
        info = RequestInfo(
            path=CLASSIFY_PATH,
            method="POST",
            request_id=metadata.get("x-request-id", "")[:MAX_REQUEST_ID] or uuid.uuid4().hex,
            user=request.key,
            started=time.perf_counter(),
            started_ns=time.time_ns(),
        )
        started = time.perf_counter()
        decision = classify(chat, classifier)
        seconds = time.perf_counter() - started
        retry = retry_excerpt(messages) if snapshot.telemetry.retry.enabled and info.user else ""
        decided = DecisionInfo(decision, seconds, retry_text=retry)
        recorder = self._recorder
        trace = recorder.started(info)
        recorder.decided(info, decided, trace)
        recorder.finished(info, decided, ResponseInfo(ended=time.perf_counter()), trace)
        tier = snapshot.tier(decision.tier)
        return pb.ClassifyResponse(
            decision=pb.Decision(
                tier=decision.tier,
                classifier=decision.classifier,
                rule=decision.rule,
                reason=decision.reason,
                keywords=list(decision.keywords),
                chars=decision.chars,
                bytes=decision.bytes,
                messages=decision.messages,
                model=tier.model,
            ),
            request_id=info.request_id,
        )

    async def submit_feedback(
        self, request: pb.SubmitFeedbackRequest, metadata: Mapping[str, str]
    ) -> pb.SubmitFeedbackResponse:
        self._admit("SubmitFeedback", metadata, self._feedback_limit)
        if not request.request_id or len(request.request_id) > MAX_REQUEST_ID:
            raise ApiError(INVALID_ARGUMENT, f"request_id must have 1..{MAX_REQUEST_ID} characters")
        if request.score not in (-1, 0, 1):
            raise ApiError(INVALID_ARGUMENT, "score must be -1 (down), 0 or 1 (up)")
        if len(request.comment) > MAX_COMMENT:
            raise ApiError(INVALID_ARGUMENT, f"comment over {MAX_COMMENT} characters")
        if request.request_id in self._answered:
            self._recorder.metrics.api_refused.labels("SubmitFeedback", "duplicate").inc()
            raise ApiError(ALREADY_EXISTS, "feedback for this request was already recorded")
        result = await self._recorder.feedback(request.request_id, request.score, request.comment)
        if result.known:
            self._answered[request.request_id] = None
            if len(self._answered) > FEEDBACK_MEMORY:
                self._answered.popitem(last=False)
        return pb.SubmitFeedbackResponse(known=result.known, suspicion=_SUSPICION[result.suspicion])

    def invalidate_cache(
        self, request: pb.InvalidateCacheRequest, metadata: Mapping[str, str]
    ) -> pb.InvalidateCacheResponse:
        caller = self._admit("InvalidateCache", metadata, self._feedback_limit)
        if caller not in self._snapshot().cache.admin_callers:
            self._recorder.metrics.api_refused.labels("InvalidateCache", "forbidden").inc()
            raise ApiError(PERMISSION_DENIED, "this caller is not in cache.admin_callers")
        dropped = self._cache.clear(local=True) if self._cache is not None else 0
        return pb.InvalidateCacheResponse(dropped=dropped)


class GrpcServicer(pb_grpc.CascadeServicer):
    """`CascadeApi` on the grpc.aio server."""

    def __init__(self, api: CascadeApi) -> None:
        self._api = api

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ClassifyResponse:
        try:
            return self._api.classify(request, _metadata(context))
        except ApiError as exc:
            await context.abort(_STATUS[exc.code], exc.message)
            raise

    async def SubmitFeedback(
        self,
        request: pb.SubmitFeedbackRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.SubmitFeedbackResponse:
        try:
            return await self._api.submit_feedback(request, _metadata(context))
        except ApiError as exc:
            await context.abort(_STATUS[exc.code], exc.message)
            raise

    async def InvalidateCache(
        self,
        request: pb.InvalidateCacheRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.InvalidateCacheResponse:
        try:
            return self._api.invalidate_cache(request, _metadata(context))
        except ApiError as exc:
            await context.abort(_STATUS[exc.code], exc.message)
            raise


def _metadata(context: grpc.aio.ServicerContext[object, object]) -> dict[str, str]:
    return {key: str(value) for key, value in context.invocation_metadata() or ()}


def add_to_server(api: CascadeApi, server: grpc.aio.Server) -> None:
    pb_grpc.add_CascadeServicer_to_server(GrpcServicer(api), server)  # type: ignore[no-untyped-call]


def h2_methods(api: CascadeApi) -> dict[str, Callable[[bytes, dict[str, str]], Any]]:
    """The API's unary methods for the HTTP/2 transport, by path."""

    async def classify(raw: bytes, metadata: dict[str, str]) -> bytes:
        try:
            return bytes(
                api.classify(_parse(pb.ClassifyRequest, raw), metadata).SerializeToString()
            )
        except ApiError as exc:
            raise GrpcError(exc.code, exc.message) from None

    async def submit_feedback(raw: bytes, metadata: dict[str, str]) -> bytes:
        request = _parse(pb.SubmitFeedbackRequest, raw)
        try:
            return bytes((await api.submit_feedback(request, metadata)).SerializeToString())
        except ApiError as exc:
            raise GrpcError(exc.code, exc.message) from None

    async def invalidate_cache(raw: bytes, metadata: dict[str, str]) -> bytes:
        request = _parse(pb.InvalidateCacheRequest, raw)
        try:
            return bytes(api.invalidate_cache(request, metadata).SerializeToString())
        except ApiError as exc:
            raise GrpcError(exc.code, exc.message) from None

    return {
        CLASSIFY_PATH: classify,
        f"/{SERVICE}/SubmitFeedback": submit_feedback,
        f"/{SERVICE}/InvalidateCache": invalidate_cache,
    }


def _parse(kind: type[Message], raw: bytes) -> Message:
    try:
        return kind.FromString(raw)  # type: ignore[attr-defined, no-any-return]
    except DecodeError:
        raise GrpcError(INVALID_ARGUMENT, "malformed request message") from None
