"""The processor with the real `Recorder`: spans (in-memory exporter), metrics, decision log.

Streams are scripted as Envoy sends them with response processing on: request headers, the
buffered body, then response body chunks, the first one carrying Envoy's attributes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from extproc.config.snapshot import Snapshot, compile_config
from extproc.routing.attributes import ATTRIBUTES_KEY
from extproc.routing.processor import RequestProcessor
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.recorder import Recorder
from extproc.telemetry.tracing import MISROUTE_EVENT, SPAN_NAME, Tracing
from tests.conftest import chat_body
from tests.protocol.streams import request_body, request_headers, set_headers

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
CONFIG = """
tiers:
  - {name: weak, model: small, price: {input_per_mtok: 1, output_per_mtok: 2}}
  - {name: strong, model: big, price: {input_per_mtok: 10, output_per_mtok: 20}}
classifier: v7
classifiers:
  v7:
    default: weak
    rules: [{name: keyword, kind: keyword, tier: strong, keywords: [refactor]}]
"""


def response_chunk(
    body: bytes, *, end: bool = False, status: int = 0, tier: str = "", cluster: str = ""
) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=end))
    if status:
        attributes = struct_pb2.Struct()
        attributes.update(
            {
                "response.code": status,
                "xds.cluster_name": cluster or f"tier_{tier}",
                "upstream.address": "127.0.0.1:1234",
                "xds.upstream_host_metadata": (
                    'filter_metadata { key: "cascade" value { fields { key: "model" value { '
                    'string_value: "m" } } fields { key: "tier" value { string_value: '
                    f'"{tier}" }} }} }} }} '
                ),
            }
        )
        message.attributes[ATTRIBUTES_KEY].CopyFrom(attributes)
    return message


def sse_answer(tokens_in: int, tokens_out: int) -> list[bytes]:
    usage = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}
    return [
        b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        b'data: {"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\ndata: [DONE]\n\n",
    ]


class Rig:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.metrics = Metrics()
        self.recorder = Recorder.from_settings(lambda: snapshot, self.metrics, Tracing(provider))

    def run(self, *messages: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        processor = RequestProcessor(self.snapshot, self.recorder)
        answers = []
        for message in messages:
            answers.append(processor.handle(message))
            processor.after_answer()  # as the transports do once the answer is written
        processor.close()
        return answers

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def rig_factory(tmp_path: Path) -> Callable[[str], Rig]:
    def build(extra: str = "") -> Rig:
        text = CONFIG + f"telemetry:\n  decision_log: {{path: {tmp_path / 'd.jsonl'}}}\n" + extra
        rig = Rig(compile_config(text, "test.yaml"))
        rig.recorder.start()
        return rig

    return build


def log_records(rig: Rig) -> list[dict[str, Any]]:
    assert rig.recorder.decision_log is not None
    return [json.loads(line) for line in rig.recorder.decision_log.path.read_text().splitlines()]


async def test_span_parent_propagation_attributes_and_tags(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    traceparent = f"00-{TRACE_ID}-{PARENT}-01"
    answers = rig.run(
        request_headers(extra={"traceparent": traceparent, "x-user-id": "alice"}),
        request_body(chat_body("please refactor this", "and this", model="gpt-x")),
        *(
            response_chunk(c, status=200 if i == 0 else 0, tier="strong")
            for i, c in enumerate(sse_answer(10, 20))
        ),
        response_chunk(b"", end=True),
    )
    assert all(a.WhichOneof("response") == "response_body" for a in answers[2:])
    assert not any(a.response_body.HasField("response") for a in answers[2:])
    upstream = set_headers(answers[1])["traceparent"]
    assert upstream.startswith(f"00-{TRACE_ID}-") and PARENT not in upstream
    await rig.recorder.drain()
    (span,) = rig.exporter.get_finished_spans()
    assert span.name == SPAN_NAME
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    assert upstream.split("-")[2] == f"{span.context.span_id:016x}"
    attrs = dict(span.attributes or {})
    assert attrs["cascade.tier"] == "strong" and attrs["cascade.rule"] == "keyword"
    assert list(attrs["cascade.keywords"]) == ["refactor"]  # type: ignore[arg-type]
    assert attrs["cascade.messages"] == 2 and attrs["cascade.chars"] > 0
    assert list(attrs["langfuse.trace.tags"]) == [  # type: ignore[arg-type]
        "tier:strong",
        "keyword_match:true",
        "turn_count:2",
        "classifier:v7",
        "rule:keyword",
    ]
    assert attrs["gen_ai.request.model"] == "gpt-x"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (10, 20)
    assert attrs["http.response.status_code"] == 200
    assert attrs["cascade.served_tier"] == "strong" and attrs["cascade.fallback"] is False
    assert attrs["cascade.cost_usd"] == pytest.approx(10 * 10 / 1e6 + 20 * 20 / 1e6)
    assert "gen_ai.input.messages" not in attrs
    assert all("refactor this" not in str(v) for v in attrs.values() if not isinstance(v, tuple))
    await rig.recorder.stop()


async def test_metrics_for_a_fallback_and_the_decision_record(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.run(
        request_headers(extra={"x-request-id": "req-9"}),
        request_body(chat_body("refactor me")),
        response_chunk(
            orjson.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
            status=200,
            tier="weak",
            cluster="tier_strong_fallback",
        ),
        response_chunk(b"", end=True),
    )
    await rig.recorder.drain()
    labels = {
        "tier": "strong",
        "served_tier": "weak",
        "cluster": "tier_strong_fallback",
        "status": "200",
        "classifier": "v7",
    }
    assert rig.sample("cascade_responses_total", **labels) == 1
    assert rig.sample("cascade_tokens_total", tier="weak", kind="output") == 4
    assert rig.sample("cascade_cost_dollars_total", tier="weak") == pytest.approx(11e-6)
    assert rig.sample("cascade_ttft_seconds_count", tier="weak", classifier="v7") == 1
    assert (
        rig.sample("cascade_decisions_total", tier="strong", classifier="v7", rule="keyword") == 1
    )
    (record,) = log_records(rig)
    assert record["kind"] == "request" and record["id"] == "req-9"
    assert (record["tier"], record["served_tier"], record["fallback"]) == ("strong", "weak", True)
    assert (record["tokens_in"], record["tokens_out"], record["status"]) == (3, 4, 200)
    assert record["fn_suspect"] is False and record["fp_suspect"] is False
    assert record["messages"] == 1 and "messages_text" not in record
    await rig.recorder.stop()


async def test_broken_off_stream_and_invalid_body_are_recorded(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.run(request_headers(), request_body(b"{nope"))
    rig.run(
        request_headers(extra={"x-request-id": "cut"}),
        request_body(chat_body("hello")),
        response_chunk(b"data: {}\n\n", status=200, tier="weak"),
    )  # closed before end_of_stream
    await rig.recorder.drain()
    assert rig.sample("cascade_parse_failures_total", kind="invalid_body") == 1
    records = log_records(rig)
    assert records[0]["status"] == 400 and records[0]["tier"] is None
    assert records[1]["id"] == "cut" and records[1]["complete"] is False
    assert len(rig.exporter.get_finished_spans()) == 2
    await rig.recorder.stop()


async def test_prompt_capture_goes_through_the_redaction_hook(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory("  capture_prompts: true\n")
    rig.run(request_headers(), request_body(chat_body("mail me at bob@example.com")))
    await rig.recorder.drain()
    (record,) = log_records(rig)
    assert record["messages_text"] == [{"role": "user", "content": "mail me at [email]"}]
    (span,) = rig.exporter.get_finished_spans()
    assert "[email]" in str((span.attributes or {})["gen_ai.input.messages"])
    await rig.recorder.stop()


async def test_retry_pattern_true_and_false(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    def ask(text: str, request_id: str, user: str = "u1") -> None:
        rig.run(
            request_headers(extra={"x-user-id": user, "x-request-id": request_id}),
            request_body(chat_body(text)),
            response_chunk(b"{}", status=200, tier="weak"),
            response_chunk(b"", end=True),
        )

    ask("how do I sort a dict by value", "a")
    await rig.recorder.drain()
    ask("how do I sort a dict by value?", "b")  # retry: suspect
    ask("how do I sort a dict by value", "c", user="u2")  # another user: no
    ask("what time zone is Seoul in", "d")  # not similar: no
    await rig.recorder.drain()
    records = {r["id"]: r for r in log_records(rig)}
    assert records["b"]["fn_suspect"] is True and records["b"]["retry_of"] == "a"
    assert not records["c"]["fn_suspect"] and not records["d"]["fn_suspect"]
    labels = {"kind": "false_negative", "signal": "retry", "classifier": "v7"}
    assert rig.sample("cascade_misroute_suspected_total", **labels) == 1
    span_b = next(
        s
        for s in rig.exporter.get_finished_spans()
        if (s.attributes or {}).get("cascade.request_id") == "b"
    )
    (event,) = span_b.events
    assert event.name == MISROUTE_EVENT and (event.attributes or {})["cascade.retry_of"] == "a"
    await rig.recorder.stop()


async def test_feedback_judgement_and_record(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.run(
        request_headers(extra={"x-request-id": "s1"}),
        request_body(chat_body("refactor")),
        response_chunk(
            orjson.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
            status=200,
            tier="strong",
            end=True,
        ),
    )
    await rig.recorder.drain()
    result = await rig.recorder.feedback("s1", 1, "great, thanks")
    assert (result.known, result.suspicion) == (True, "false_positive")
    assert (await rig.recorder.feedback("missing", -1, "")).known is False
    await rig.recorder.drain()
    feedback = [r for r in log_records(rig) if r["kind"] == "feedback"]
    assert len(feedback) == 1 and feedback[0]["fp_suspect"] is True
    assert feedback[0]["comment_chars"] == 13 and "comment" not in feedback[0]
    assert rig.sample("cascade_feedback_total", score="1") == 1
    # feedback for a request the server never saw is answered `known: false` and not counted
    assert rig.sample("cascade_feedback_total", score="-1") == 0
    await rig.recorder.stop()


def test_no_tracing_configured_means_no_spans_and_no_propagation() -> None:
    snapshot = compile_config(CONFIG, "t.yaml")
    recorder = Recorder.from_settings(lambda: snapshot, Metrics(), Tracing.from_env({}))
    assert not recorder.tracing.enabled
    processor = RequestProcessor(snapshot, recorder)
    processor.handle(request_headers(extra={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}))
    answer = processor.handle(request_body(chat_body("hi")))
    assert "traceparent" not in set_headers(answer)


async def test_fabricated_attributes_create_no_new_series(rig_factory: Callable[..., Rig]) -> None:
    """A direct ext_proc caller inventing cluster names, statuses and tiers: one `other` label."""
    rig = rig_factory()
    for n in range(300):  # bounded
        rig.run(
            request_headers(extra={"x-request-id": f"forged-{n}"}),
            request_body(chat_body("hello")),
            response_chunk(b"{}", status=1000 + n, tier=f"tier{n}", cluster=f"evil_{n}"),
            response_chunk(b"", end=True),
        )
    await rig.recorder.drain()
    series = [
        sample.labels
        for metric in rig.metrics.registry.collect()
        if metric.name == "cascade_responses"
        for sample in metric.samples
        if sample.name == "cascade_responses_total"
    ]
    assert len(series) == 1, series
    assert series[0]["cluster"] == "other"
    assert series[0]["status"] == "other"
    assert series[0]["served_tier"] == "weak"  # the decided tier: the forged one is unknown
    await rig.recorder.stop()
