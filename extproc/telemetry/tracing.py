"""OpenTelemetry traces: one span per classified request. The only module importing the OTel SDK.

Off unless configured, by the standard environment variables:

- `OTEL_TRACES_EXPORTER`: `otlp` (default once an endpoint is set), `console`, or `none`;
- `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: where to send;
- `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`
  (default, as the specification recommends) or `grpc`;
- `OTEL_SERVICE_NAME` (default `cascade-router`), `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, ... as the SDK reads
  them; `OTEL_SDK_DISABLED=true` turns everything off.

The span is parented on the `traceparent` of the HTTP request Envoy forwards (not the gRPC side
channel), carries the decision and, at the end of the answer, what the response path saw; its
context goes upstream through the header mutation. Spans are exported in batches by a
background thread: nothing here waits for the network. Prompt text is never put on a span
unless `telemetry.capture_prompts` is on (and then only after the redaction hook).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from extproc import __version__

logger = logging.getLogger(__name__)

SERVICE_NAME = "cascade-router"
SPAN_NAME = "cascade.route"
#: Span event of a suspected misroute.
MISROUTE_EVENT = "cascade.misroute_suspected"

_PROPAGATOR = TraceContextTextMapPropagator()

__all__ = ["MISROUTE_EVENT", "SPAN_NAME", "Tracing", "span_processor_for"]


class Tracing:
    """Creates, decorates and ends the per-request spans; a no-op when `provider` is None."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("cascade-router", __version__) if provider else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if environ is None else environ
        exporter = _exporter_from_env(env)
        if exporter is None:
            return cls(None)
        provider = make_provider(env)
        provider.add_span_processor(span_processor_for(exporter))
        logger.info("tracing on: %s", type(exporter).__name__)
        return cls(provider)

    # -- per request --------------------------------------------------------------------------

    def start(
        self, headers: Mapping[str, str], start_ns: int, name: str = SPAN_NAME
    ) -> Span | None:
        if self._tracer is None:
            return None
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        return self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, start_time=start_ns or None
        )

    @staticmethod
    def inject(span: object) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) naming this span, for the upstream request."""
        if not isinstance(span, Span):
            return []
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return list(carrier.items())

    @staticmethod
    def annotate(span: object, attributes: Mapping[str, Any]) -> None:
        if isinstance(span, Span) and span.is_recording():
            span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    @staticmethod
    def event(span: object, name: str, attributes: Mapping[str, Any]) -> None:
        if isinstance(span, Span) and span.is_recording():
            span.add_event(name, {k: v for k, v in attributes.items() if v is not None})

    @staticmethod
    def end(span: object, end_ns: int, *, error: str = "") -> None:
        if not isinstance(span, Span):
            return
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns or None)

    @staticmethod
    def trace_id(span: object) -> str:
        if not isinstance(span, Span):
            return ""
        context = span.get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else ""

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def make_provider(env: Mapping[str, str]) -> TracerProvider:
    attributes: dict[str, Any] = {"service.version": __version__}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = SERVICE_NAME
    return TracerProvider(resource=Resource.create(attributes))


def span_processor_for(exporter: SpanExporter, *, batch: bool = True) -> Any:
    return BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)


def _exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names:
        names = ["otlp"] if endpoint else []
    if not names or names == ["none"]:
        return None
    name = names[0]
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        logger.warning("OTEL_TRACES_EXPORTER=%s is not supported here; tracing off", name)
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    logger.warning("OTLP protocol %r is not supported (grpc, http/protobuf); tracing off", protocol)
    return None


def langfuse_tags(
    tier: str, keywords: Sequence[str], messages: int, classifier: str, rule: str
) -> list[str]:
    """The tags Langfuse shows on a trace, as the seeds' traces carry them."""
    return [
        f"tier:{tier}",
        f"keyword_match:{'true' if keywords else 'false'}",
        f"turn_count:{messages}",
        f"classifier:{classifier}",
        f"rule:{rule}",
    ]
