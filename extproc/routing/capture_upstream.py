"""The per-attempt role's part in pair capture: reading a captured shadow copy's answer.

The upstream filter is configured for request phases only; for a shadow copy whose primary is
waiting (`PairJoiner.shadow_tap`), the request-headers answer carries a `mode_override` (the
filter has `allow_mode_override` when `capture:` is on) that asks Envoy for this attempt's
response headers (the status) and its response body, streamed. Envoy discards a shadow's
response after the upstream filters have seen it, so this is the only place it can be read.
Each message is answered empty at once: the shadow is never changed or delayed.
"""

from __future__ import annotations

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.core import headers
from extproc.routing import mutations
from extproc.routing.capture import ShadowTap
from extproc.routing.headermap import header_map

_MODE = pm.ProcessingMode
#: The request-headers answer for a captured shadow: the same request phases as configured
#: (the body stays BUFFERED for the model rewrite capture requires), plus the response.
SHADOW_MODE = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(),
    mode_override=_MODE(
        request_header_mode=_MODE.SEND,
        request_body_mode=_MODE.BUFFERED,
        response_header_mode=_MODE.SEND,
        response_body_mode=_MODE.STREAMED,
        request_trailer_mode=_MODE.SKIP,
        response_trailer_mode=_MODE.SKIP,
    ),
)
SHADOW_KINDS = frozenset({"response_headers", "response_body", "response_trailers"})


def shadow_response(tap: ShadowTap, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
    kind = request.WhichOneof("request")
    if kind == "response_headers":
        status = header_map(request.response_headers.headers).get(headers.STATUS, "")
        tap.status = int(status) if status.isdigit() else 0
        if request.response_headers.end_of_stream:
            tap.done(complete=True)
        return mutations.EMPTY_RESPONSE_HEADERS
    if kind == "response_body":
        tap.feed(request.response_body.body)
        if request.response_body.end_of_stream:
            tap.done(complete=True)
        return mutations.EMPTY_RESPONSE_BODY
    tap.done(complete=True)
    return mutations.EMPTY_RESPONSE_TRAILERS
