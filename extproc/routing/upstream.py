"""The upstream (per-attempt) ext_proc role: the model name of the host actually chosen.

Envoy runs this filter on the fallback aggregate clusters after the load balancer picked a host,
once per attempt, and opens the stream with gRPC metadata `x-cascade-role: upstream`. The first
message carries the request attribute `xds.upstream_host_metadata`: the chosen endpoint's
`filter_metadata.cascade` (`tier`, `model`), rendered by `cascade render envoy`.

Per attempt it
- counts a fallback when the host's tier is not the tier the classifier decided
  (`Observer.fell_back`; shadow copies from a mirror policy are not fallbacks);
- with `server.rewrite_model`, sets the body's `model` to the host's model and a matching
  `content-length` (a retry moved from strong to weak must ask weak for weak's model).
- with `capture:`, asks Envoy for the answer of a mirrored shadow copy whose primary is waiting
  and hands it to the pair joiner (`extproc/routing/capture_upstream.py`).

On a gated tier's attempts the confidence gate holds and judges the answer
(`extproc.routing.gate_attempt`).

Anything unexpected (no metadata, a body that is not JSON) leaves the attempt unchanged.
"""

from __future__ import annotations

import logging

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.snapshot import Snapshot
from extproc.core import headers
from extproc.routing import mutations
from extproc.routing.attributes import host_of
from extproc.routing.capture import PairJoiner, ShadowTap
from extproc.routing.capture_upstream import SHADOW_KINDS, SHADOW_MODE, shadow_response
from extproc.routing.gate_attempt import GateAttempt
from extproc.routing.headermap import header_map
from extproc.routing.observer import NullObserver, Observer, RequestInfo

logger = logging.getLogger(__name__)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _content_length(length: int) -> pb.CommonResponse:
    return pb.CommonResponse(
        header_mutation=pb.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(
                        key=headers.CONTENT_LENGTH, raw_value=str(length).encode()
                    ),
                    append_action=_OVERWRITE,
                )
            ]
        )
    )


class UpstreamProcessor:
    """One attempt's stream. Same contract as `RequestProcessor`: `handle` never raises."""

    __slots__ = (
        "decided",
        "done",
        "gate",
        "host_model",
        "host_tier",
        "info",
        "observer",
        "pairs",
        "shadow",
        "snapshot",
    )

    def __init__(
        self,
        snapshot: Snapshot,
        observer: Observer | None = None,
        pairs: PairJoiner | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.observer: Observer = observer or NullObserver()
        #: mirrored-pair capture (`capture:`): the tap of a captured shadow copy
        self.pairs = pairs
        self.shadow: ShadowTap | None = None
        self.info = RequestInfo()
        self.done = False
        self.decided = ""
        self.host_tier = ""
        self.host_model = ""
        self.gate: GateAttempt | None = None

    def handle_all(self, request: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        """The answers to send now, in order: usually one; none while the gate holds an answer,
        several when it releases it (`extproc.routing.gate_hold`). Never raises."""
        gate = self.gate
        if gate is None or gate.hold is None:
            return [self.handle(request)]
        kind = request.WhichOneof("request") or ""
        try:
            if kind == "response_headers":
                timeout = max(self.snapshot.envoy.message_timeout_ms, gate.hold.settings.hold_ms)
                return gate.held_headers(request.response_headers, timeout + 1000)
            if kind == "response_body":
                return gate.held_body(request.response_body)
        except Exception:
            logger.exception("gate hold failed; releasing (request %s)", self.info.request_id)
            return gate.hold.release([]) if gate.hold.holding else [self.handle(request)]
        return [self.handle(request)]

    def handle(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        kind = request.WhichOneof("request") or ""
        try:
            if kind == "request_headers":
                return self.on_request_headers(request)
            if kind == "request_body":
                return self.on_request_body(request.request_body)
            if self.shadow is not None and kind in SHADOW_KINDS:
                return shadow_response(self.shadow, request)
            if kind == "response_headers" and self.gate is not None:
                return self.gate.on_response_headers(request.response_headers)
            if kind == "response_body" and self.gate is not None:
                return self.gate.on_response_body(request.response_body)
        except Exception:
            logger.exception("upstream %s handling failed (request %s)", kind, self.info.request_id)
        return mutations.EMPTY_BY_KIND.get(kind, mutations.EMPTY_REQUEST_HEADERS)

    def on_request_headers(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        values = header_map(request.request_headers.headers)
        info = self.info = RequestInfo(
            path=values.get(headers.PATH, ""),
            method=values.get(headers.METHOD, ""),
            request_id=values.get(headers.REQUEST_ID, ""),
            content_type=values.get(headers.CONTENT_TYPE, ""),
            headers=values,
        )
        self.decided = values.get(headers.TIER, "")
        self.host_tier, self.host_model, address = host_of(request)
        self.gate = GateAttempt.open(self.snapshot, values, self.host_tier, info, self.observer)
        escalated = self.gate is not None and self.gate.follow is not None
        if (
            self.decided
            and self.host_tier
            and self.host_tier != self.decided
            and headers.SHADOW_OF not in values
            and not escalated  # a gate's escalation is counted as one, not as a fallback
        ):
            logger.info(
                "fallback %s -> %s (host %s, request %s)",
                self.decided,
                self.host_tier,
                address,
                info.request_id,
            )
            self.observer.fell_back(self.decided, self.host_tier, info)
        if self.pairs is not None and headers.SHADOW_OF in values:
            self.shadow = self.pairs.shadow_tap(
                self.snapshot, info.request_id, self.host_tier, self.host_model
            )
            if self.shadow is not None:
                return SHADOW_MODE
        if self.gate is not None:
            return self.gate.request_headers_answer()
        return mutations.EMPTY_REQUEST_HEADERS

    def on_request_body(self, message: pb.HttpBody) -> pb.ProcessingResponse:
        if not message.end_of_stream:
            return mutations.EMPTY_REQUEST_BODY
        if self.gate is not None:
            self.gate.on_request_body(message.body)
        body = self._rewritten(message.body)
        if self.gate is not None:  # with `request_logprobs`: ask the gated attempt for them
            body = self.gate.request_body(body if body is not None else message.body) or body
        if body is not None:
            common = _content_length(len(body))
            common.body_mutation.body = body
            return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
        # Upstream filters change the router's request headers in place: a content-length set
        # for an earlier attempt's rewritten body is still there while the router replays the
        # original body for this one. Left alone, the backend would wait for the missing bytes.
        declared = self.info.headers.get(headers.CONTENT_LENGTH)
        if declared is not None and declared != str(len(message.body)):
            return pb.ProcessingResponse(
                request_body=pb.BodyResponse(response=_content_length(len(message.body)))
            )
        return mutations.EMPTY_REQUEST_BODY

    def _rewritten(self, body: bytes) -> bytes | None:
        """The body with the host's model, or None to leave it as it is."""
        model = self.host_model
        if not model or not self.snapshot.server.rewrite_model or not body:
            return None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(document, dict) or document.get("model") == model:
            return None
        document["model"] = model
        return orjson.dumps(document)

    #: nothing is ever deferred on the per-attempt role
    pending = False

    def after_answer(self) -> None:
        """Nothing is deferred on the per-attempt role (the fallback count is taken inline)."""

    def close(self) -> None:
        """The stream ended (same interface as `RequestProcessor`)."""
        if self.shadow is not None:
            self.shadow.done(complete=False)
