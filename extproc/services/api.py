"""`cascade.v1.Cascade`: Classify and SubmitFeedback, on the same gRPC port as ext_proc.

protos/cascade/v1/cascade.proto defines the service; the generated code is in `extproc/_pb`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from extproc._pb.cascade.v1 import cascade_pb2 as pb
from extproc._pb.cascade.v1 import cascade_pb2_grpc as pb_grpc
from extproc.config.snapshot import Snapshot
from extproc.core.chat import ChatRequest
from extproc.core.classify import classify
from extproc.routing.choice import choose_classifier
from extproc.core.excerpt import retry_excerpt
from extproc.routing.observer import DecisionInfo, RequestInfo, ResponseInfo
from extproc.telemetry.misroute import FALSE_NEGATIVE, FALSE_POSITIVE
from extproc.telemetry.recorder import Recorder
from extproc.transport.h2 import frames as h2_frames
from extproc.transport.h2.frames import GrpcError
from extproc.transport.h2.server import UnaryMethod

SERVICE = "cascade.v1.Cascade"
CLASSIFY_PATH = "/cascade.v1.Cascade/Classify"
MAX_MESSAGES = 10_000
MAX_COMMENT = 4_000
MAX_REQUEST_ID = 256

_SUSPICION = {
    "": pb.SUSPICION_NONE,
    FALSE_NEGATIVE: pb.SUSPICION_FALSE_NEGATIVE,
    FALSE_POSITIVE: pb.SUSPICION_FALSE_POSITIVE,
}


class CascadeService(pb_grpc.CascadeServicer):
    def __init__(self, snapshot: Callable[[], Snapshot], recorder: Recorder) -> None:
        self._snapshot = snapshot
        self._recorder = recorder

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ClassifyResponse:
        snapshot = self._snapshot()
        if len(request.messages) > MAX_MESSAGES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "too many messages")
        total = sum(len(m.content) for m in request.messages)
        if total > snapshot.server.max_body_bytes:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"messages exceed {snapshot.server.max_body_bytes} characters",
            )
        if request.classifier:
            classifier = snapshot.classifiers.get(request.classifier)
            if classifier is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown classifier {request.classifier!r}; "
                    f"configured: {', '.join(snapshot.classifiers)}",
                )
                raise AssertionError  # abort raises; this keeps the type checker informed
        else:
            classifier = choose_classifier(snapshot, request.key)
        messages = tuple((m.role, m.content) for m in request.messages)
        chat = ChatRequest(messages=messages, model="", document={})
        info = RequestInfo(
            path=CLASSIFY_PATH,
            method="POST",
            request_id=_metadata(context, "x-request-id")[:MAX_REQUEST_ID] or uuid.uuid4().hex,
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

    async def SubmitFeedback(
        self,
        request: pb.SubmitFeedbackRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.SubmitFeedbackResponse:
        if not request.request_id or len(request.request_id) > MAX_REQUEST_ID:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request_id must have 1..{MAX_REQUEST_ID} characters",
            )
        if request.score not in (-1, 0, 1):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "score must be -1 (down), 0 or 1 (up)"
            )
        if len(request.comment) > MAX_COMMENT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"comment over {MAX_COMMENT} characters"
            )
        result = await self._recorder.feedback(request.request_id, request.score, request.comment)
        return pb.SubmitFeedbackResponse(known=result.known, suspicion=_SUSPICION[result.suspicion])


def _metadata(context: grpc.aio.ServicerContext[object, object], name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return ""


def add_to_server(service: CascadeService, server: grpc.aio.Server) -> None:
    pb_grpc.add_CascadeServicer_to_server(service, server)  # type: ignore[no-untyped-call]


class _H2Context:
    """What the service's methods use of a grpc.aio context, on the HTTP/2 transport."""

    def __init__(self, metadata: dict[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._metadata.items())

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise GrpcError(int(code.value[0]), details)


def h2_methods(service: CascadeService) -> dict[str, UnaryMethod]:
    """The service's unary methods for `extproc.transport.h2.server`, by path."""

    async def classify(raw: bytes, metadata: dict[str, str]) -> bytes:
        request = _parse(pb.ClassifyRequest, raw)
        context: Any = _H2Context(metadata)
        return bytes((await service.Classify(request, context)).SerializeToString())

    async def submit_feedback(raw: bytes, metadata: dict[str, str]) -> bytes:
        request = _parse(pb.SubmitFeedbackRequest, raw)
        context: Any = _H2Context(metadata)
        return bytes((await service.SubmitFeedback(request, context)).SerializeToString())

    return {CLASSIFY_PATH: classify, f"/{SERVICE}/SubmitFeedback": submit_feedback}


def _parse(kind: Any, raw: bytes) -> Any:
    try:
        return kind.FromString(raw)
    except DecodeError as exc:
        raise GrpcError(h2_frames.INVALID_ARGUMENT, f"malformed request: {exc}") from exc
