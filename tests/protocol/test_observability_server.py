"""The whole server in-process: OTLP export to a receiver on loopback, /metrics over HTTP,
and the cascade.v1 service on the ext_proc port."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from extproc._pb.cascade.v1 import cascade_pb2, cascade_pb2_grpc
from extproc.app.run import CascadeServer, ServeOptions
from extproc.config.snapshot import DEFAULT_CONFIG
from tests.conftest import API_AUTH, chat_body, write_api_tokens
from tests.protocol.streams import request_body, request_headers
from tests.protocol.test_recorder import TRACE_ID, response_chunk

TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Receiver:
    """A minimal OTLP/HTTP trace receiver (protobuf) on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        received = self.requests
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                paths.append(self.path)
                received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver()
    yield instance
    instance.close()


@pytest.fixture
async def server(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[CascadeServer]:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{receiver.port}/v1/traces"
    )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "cascade-test")
    config = tmp_path / "cascade.yaml"
    config.write_text(
        DEFAULT_CONFIG.read_text()
        + f"\ntelemetry:\n  decision_log: {{path: {tmp_path / 'decisions.jsonl'}}}\n"
    )
    instance = CascadeServer(
        ServeOptions(
            config=config,
            listen="127.0.0.1:0",
            drain_delay=0.0,
            grace=1.0,
            metrics_listen="127.0.0.1:0",
            api_tokens=write_api_tokens(tmp_path),
        )
    )
    await instance.start()
    yield instance
    await instance.shutdown()


def scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.getheader("content-type", "").startswith("text/plain")
        return reply.read().decode()
    finally:
        conn.close()


async def one_stream(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ext_grpc.ExternalProcessorStub(channel).Process()
        for message in (
            request_headers(extra={"traceparent": TRACEPARENT, "x-request-id": "otlp-1"}),
            request_body(chat_body("design a cache")),
            response_chunk(
                b'{"usage":{"prompt_tokens":2,"completion_tokens":3}}', status=200, tier="strong"
            ),
            response_chunk(b"", end=True),
        ):
            await call.write(message)
            await asyncio.wait_for(call.read(), 5)
        await call.done_writing()


async def test_otlp_http_export_reaches_a_loopback_receiver(
    server: CascadeServer, receiver: Receiver
) -> None:
    assert server.recorder.tracing.enabled
    await one_stream(server.port)
    await server.shutdown()  # flushes the batch span processor
    assert receiver.paths == ["/v1/traces"]
    spans = [
        (resource.resource, span)
        for request in receiver.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert len(spans) == 1
    resource, span = spans[0]
    assert span.trace_id.hex() == TRACE_ID
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["cascade.tier"].string_value == "strong"
    assert attributes["cascade.rule"].string_value == "keyword"
    assert attributes["gen_ai.usage.output_tokens"].int_value == 3
    names = {a.key: a.value.string_value for a in resource.attributes}
    assert names["service.name"] == "cascade-test"


async def test_metrics_endpoint_and_cascade_api_on_the_same_port(server: CascadeServer) -> None:
    await one_stream(server.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cascade_pb2_grpc.CascadeStub(channel)
        answer = await stub.Classify(
            cascade_pb2.ClassifyRequest(
                messages=[cascade_pb2.Message(role="user", content="please optimize this")]
            ),
            metadata=(("x-request-id", "api-1"), *API_AUTH),
        )
        assert (answer.decision.tier, answer.decision.model, answer.request_id) == (
            "strong",
            "glm-5",
            "api-1",
        )
        generated = await stub.Classify(
            cascade_pb2.ClassifyRequest(messages=[cascade_pb2.Message(role="user", content="hi")]),
            metadata=API_AUTH,
        )
        assert generated.decision.tier == "weak" and len(generated.request_id) == 32
        await server.recorder.drain()
        feedback = await stub.SubmitFeedback(
            cascade_pb2.SubmitFeedbackRequest(request_id="otlp-1", score=1), metadata=API_AUTH
        )
        assert feedback.known
        # a top-tier answer (3 tokens) to a short prompt with a thumb up: over-routed
        assert feedback.suspicion == cascade_pb2.SUSPICION_FALSE_POSITIVE
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitFeedback(
                cascade_pb2.SubmitFeedbackRequest(request_id="x", score=7), metadata=API_AUTH
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Classify(cascade_pb2.ClassifyRequest(classifier="v99"), metadata=API_AUTH)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="cascade.v1.Cascade"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    text = await asyncio.to_thread(scrape, server.metrics_port)
    assert 'cascade_decisions_total{classifier="v7",rule="keyword",tier="strong"} 2.0' in text
    assert 'cascade_feedback_total{score="1"} 1.0' in text
    assert "cascade_inflight_streams 0.0" in text
    assert 'cascade_config_info{canary="",classifier="v7"' in text
    assert "cascade_classify_duration_seconds_bucket" in text


def test_otlp_grpc_export_reaches_a_loopback_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other OTLP transport: the collector's gRPC TraceService, served here on loopback."""
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    from extproc.config.snapshot import load_snapshot
    from extproc.routing.processor import RequestProcessor
    from extproc.telemetry.metrics import Metrics
    from extproc.telemetry.recorder import Recorder
    from extproc.telemetry.tracing import Tracing

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(
            self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        tracing = Tracing.from_env()
        assert tracing.enabled
        snapshot = load_snapshot(DEFAULT_CONFIG)
        recorder = Recorder(lambda: snapshot, Metrics(), tracing)
        processor = RequestProcessor(snapshot, recorder)
        processor.handle(request_headers(extra={"traceparent": TRACEPARENT}))
        processor.handle(request_body(chat_body("hello")))
        processor.close()
        # no event loop here: end the span the way the background worker would
        tracing.end(processor.trace.handle, 0)
        tracing.shutdown()
    finally:
        server.stop(1)
    spans = [
        s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]
    assert [s.trace_id.hex() for s in spans] == [TRACE_ID]
    assert {a.key: a.value.string_value for a in spans[0].attributes}["cascade.tier"] == "weak"
