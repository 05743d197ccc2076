"""The gate's metrics and decision-log records (the `Observer.gated` hook of the Recorder)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from extproc.config.snapshot import DEFAULT_CONFIG, compile_config
from extproc.routing.observer import GateInfo, RequestInfo
from extproc.telemetry.gate_telemetry import GateRecording, gate_record
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.tracing import Tracing

WEAK = "  - name: weak\n    model: qwen3-4b\n"
PRICE = "    price: {input_per_mtok: 0.1, output_per_mtok: 0.4}\n"
SNAPSHOT = compile_config(DEFAULT_CONFIG.read_text().replace(WEAK, WEAK + PRICE))


class Log:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class Recording(GateRecording):
    def __init__(self, tracing: Tracing | None = None) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.decision_log = Log()  # type: ignore[assignment]
        self.tracing = tracing or Tracing(None)
        self._snapshot = lambda: SNAPSHOT


def value(recording: Recording, name: str, **labels: str) -> float:
    found = recording.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_verdicts_escalations_findings_and_records() -> None:
    recording = Recording()
    request = RequestInfo(request_id="r1")
    escalated = GateInfo(
        tier="weak",
        escalate_to="strong",
        confidence=0.4,
        band="low",
        reason="refusal_phrase",
        reasons=("refusal_phrase", "hedge_phrase"),
        tokens_in=1000,
        tokens_out=500,
    )
    recording.gated(escalated, request)
    recording.gated(GateInfo(tier="weak", confidence=1.0, band="trusted"), request)
    recording.gated(GateInfo(tier="weak", skipped="status"), request)
    recording.gated(GateInfo(tier="forged-tier", skipped="made-up"), request)
    verdicts = "cascade_gate_verdicts_total"
    assert value(recording, verdicts, tier="weak", outcome="escalated") == 1
    assert value(recording, verdicts, tier="weak", outcome="passed") == 1
    assert value(recording, verdicts, tier="weak", outcome="skipped_status") == 1
    assert value(recording, verdicts, tier="other", outcome="skipped_other") == 1  # bounded
    assert (
        value(
            recording,
            "cascade_gate_escalations_total",
            from_tier="weak",
            to_tier="strong",
            reason="refusal_phrase",
        )
        == 1
    )
    assert value(recording, "cascade_gate_findings_total", tier="weak", check="hedge_phrase") == 1
    assert value(recording, "cascade_gate_confidence_count", tier="weak") == 2
    first = recording.decision_log.records[0]  # type: ignore[attr-defined]
    assert first["kind"] == "gate" and first["id"] == "r1"
    assert first["escalated_to"] == "strong" and first["fn_suspect"] is True
    assert first["signals"] == ["gate_escalation"]
    assert first["reasons"] == ["refusal_phrase", "hedge_phrase"]
    # the discarded answer is charged to its tier
    assert value(recording, "cascade_tokens_total", tier="weak", kind="output") == 500
    assert value(recording, "cascade_tokens_total", tier="weak", kind="input") == 1000
    assert first["tokens_out"] == 500
    expected = 1000 * 0.1 / 1e6 + 500 * 0.4 / 1e6
    assert first["cost"] == pytest.approx(expected)
    assert value(recording, "cascade_cost_dollars_total", tier="weak") == pytest.approx(expected)


def test_a_skipped_record_has_no_confidence() -> None:
    record = gate_record(GateInfo(tier="weak", skipped="encoded"), RequestInfo(), 0)
    assert record["confidence"] is None and record["skipped"] == "encoded"
    assert record["fn_suspect"] is False


def test_a_span_per_verdict_under_the_request_trace() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recording = Recording(Tracing(provider))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    request = RequestInfo(request_id="r1", headers={"traceparent": parent})
    recording.gated(
        GateInfo(tier="weak", escalate_to="strong", confidence=0.5, reasons=("refusal",)), request
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "cascade.gate"
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    (event,) = span.events
    assert event.name == "gate.verdict"
    assert event.attributes["cascade.gate.escalated_to"] == "strong"
    assert event.attributes["cascade.gate.reasons"] == "refusal"
