"""Pure builders of ext_proc `ProcessingResponse` messages."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from extproc.core import headers
from extproc.core.classify import Decision

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Immutable by convention: answers that carry nothing are built once and reused.
EMPTY_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
EMPTY_REQUEST_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())
EMPTY_REQUEST_TRAILERS = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
EMPTY_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
EMPTY_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())
EMPTY_RESPONSE_TRAILERS = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())

#: The empty answer for each kind of `ProcessingRequest`.
EMPTY_BY_KIND = {
    "request_headers": EMPTY_REQUEST_HEADERS,
    "request_body": EMPTY_REQUEST_BODY,
    "request_trailers": EMPTY_REQUEST_TRAILERS,
    "response_headers": EMPTY_RESPONSE_HEADERS,
    "response_body": EMPTY_RESPONSE_BODY,
    "response_trailers": EMPTY_RESPONSE_TRAILERS,
}


def _set(name: str, value: str | bytes) -> base_pb2.HeaderValueOption:
    raw = value.encode() if isinstance(value, str) else value
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=raw), append_action=_OVERWRITE
    )


def decision_mutation(
    decision: Decision,
    *,
    remove: Iterable[str] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> pb.HeaderMutation:
    """Set the tier, classifier, reason (and score) headers; remove the named (client-sent)
    ones."""
    score = decision.score_header
    mutation = pb.HeaderMutation(
        set_headers=[
            _set(headers.TIER, decision.tier),
            _set(headers.CLASSIFIER, decision.classifier),
            _set(headers.REASON, decision.reason),
            *([_set(headers.SCORE, score)] if score is not None else []),
            *(_set(name, value) for name, value in extra),
        ]
    )
    mutation.remove_headers.extend(remove)
    return mutation


def routed(
    kind: str,
    decision: Decision,
    *,
    body: bytes | None = None,
    remove: Iterable[str] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> pb.ProcessingResponse:
    """Answer a `request_headers` or `request_body` message with the decision.

    `clear_route_cache` makes Envoy match the route again with the new headers. A new body
    (model rewrite) comes with a matching `content-length`: a stale one makes Envoy answer 500.
    The common answer (same tier, version and reason, nothing else) is built once and reused.
    """
    if body is None and not remove and not extra:
        key = (kind, decision.tier, decision.classifier, decision.reason, decision.score_header)
        cached = _ROUTED.get(key)
        if cached is None:
            if len(_ROUTED) >= _ROUTED_MAX:
                _ROUTED.clear()
            cached = _ROUTED[key] = _build_routed(kind, decision, None, (), ())
        return cached
    return _build_routed(kind, decision, body, remove, extra)


# Answers are never mutated once built, so identical decisions can share one message.
_ROUTED: dict[tuple[str, str, str, str, str | None], pb.ProcessingResponse] = {}
_ROUTED_MAX = 4096


def _build_routed(
    kind: str,
    decision: Decision,
    body: bytes | None,
    remove: Iterable[str],
    extra: Iterable[tuple[str, str]],
) -> pb.ProcessingResponse:
    extra_headers = list(extra)
    if body is not None:
        extra_headers.append((headers.CONTENT_LENGTH, str(len(body))))
    common = pb.CommonResponse(
        header_mutation=decision_mutation(decision, remove=remove, extra=extra_headers),
        clear_route_cache=True,
    )
    if body is not None:
        common.body_mutation.body = body
    if kind == "request_headers":
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))


def error_body(message: str, *, code: str, error_type: str = "invalid_request_error") -> bytes:
    """An OpenAI-style error document."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


def immediate_error(status: int, message: str, *, code: str, details: str) -> pb.ProcessingResponse:
    """Answer the client directly (no upstream call) with an OpenAI-style JSON error."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=pb.HeaderMutation(set_headers=[_set(headers.CONTENT_TYPE, "application/json")]),
            body=error_body(message, code=code),
            details=details,
        )
    )
