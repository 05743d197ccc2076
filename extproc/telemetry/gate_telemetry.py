"""The confidence gate's telemetry: counters by tier and reason, the confidence histogram, and a
decision-log record per verdict (`kind: "gate"`; an escalation is a labelled false negative of
the classifier: `fn_suspect`, signal `gate_escalation`).

Labels are bounded: tiers through `records.tier_label`, reasons from the gate's fixed check
names (`extproc.core.gate.CHECKS`), outcomes and skip reasons from fixed sets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from extproc.config.snapshot import Snapshot
from extproc.core.gate import CHECKS
from extproc.routing.observer import GateInfo, RequestInfo
from extproc.telemetry import records
from extproc.telemetry.decision_log import DecisionLog
from extproc.telemetry.tracing import Tracing

GATE_VERDICTS = "cascade_gate_verdicts_total"
GATE_ESCALATIONS = "cascade_gate_escalations_total"
GATE_FINDINGS = "cascade_gate_findings_total"
GATE_CONFIDENCE = "cascade_gate_confidence"
SIGNAL_GATE = "gate_escalation"
#: A short span per verdict, child of the request's span (the `traceparent` the classifier set
#: on the upstream request), with one event carrying the verdict.
GATE_SPAN = "cascade.gate"
GATE_EVENT = "gate.verdict"
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
_SKIPS = {"status", "encoded", "unparsable"}


class GateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Counter(
            GATE_VERDICTS,
            "Answers the confidence gate held: passed, escalated, or skipped (not judged)",
            ["tier", "outcome"],
            registry=registry,
        )
        self.escalations = Counter(
            GATE_ESCALATIONS,
            "Answers the confidence gate escalated, by the heaviest finding",
            ["from_tier", "to_tier", "reason"],
            registry=registry,
        )
        self.findings = Counter(
            GATE_FINDINGS,
            "Checks that fired on held answers (escalated or not)",
            ["tier", "check"],
            registry=registry,
        )
        self.confidence = Histogram(
            GATE_CONFIDENCE,
            "Confidence of judged answers",
            ["tier"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )


def _check(name: str) -> str:
    return name if name in CHECKS else records.OTHER


def gate_record(gate: GateInfo, request: RequestInfo, now_ns: int) -> dict[str, Any]:
    escalated = bool(gate.escalate_to)
    return {
        "kind": "gate",
        "id": request.request_id,
        "time": records.iso(now_ns),
        "tier": gate.tier,
        "escalated_to": gate.escalate_to or None,
        "confidence": None if gate.skipped else gate.confidence,
        "band": gate.band or None,
        "reasons": list(gate.reasons),
        "skipped": gate.skipped or None,
        "tokens_in": gate.tokens_in,
        "tokens_out": gate.tokens_out,
        "fn_suspect": escalated,
        "signals": [SIGNAL_GATE] if escalated else [],
    }


class GateRecording:
    """The `Observer.gated` hook, mixed into `Recorder` (which provides these attributes)."""

    metrics: Any
    decision_log: DecisionLog | None
    tracing: Tracing
    _snapshot: Callable[[], Snapshot]

    def gated(self, gate: GateInfo, request: RequestInfo) -> None:
        snapshot = self._snapshot()
        metrics: GateMetrics = self.metrics.gate
        tier = records.tier_label(snapshot, gate.tier)
        cost = 0.0
        if gate.skipped:
            skip = gate.skipped if gate.skipped in _SKIPS else records.OTHER
            metrics.verdicts.labels(tier, f"skipped_{skip}").inc()
        else:
            metrics.confidence.labels(tier).observe(gate.confidence)
            for name in gate.reasons:
                metrics.findings.labels(tier, _check(name)).inc()
            if gate.escalate_to:
                metrics.verdicts.labels(tier, "escalated").inc()
                cost = self._charge(snapshot, tier, gate)
                target = records.tier_label(snapshot, gate.escalate_to)
                metrics.escalations.labels(tier, target, _check(gate.reason)).inc()
            else:
                metrics.verdicts.labels(tier, "passed").inc()
        if self.tracing.enabled:
            self._span(gate, request)
        if self.decision_log is not None:
            record = gate_record(gate, request, time.time_ns())
            if gate.escalate_to:
                record["cost"] = cost
            self.decision_log.write(record)

    def _span(self, gate: GateInfo, request: RequestInfo) -> None:
        now = time.time_ns()
        span = self.tracing.start(request.headers, now, GATE_SPAN)
        self.tracing.event(
            span,
            GATE_EVENT,
            {
                "cascade.gate.tier": gate.tier,
                "cascade.gate.escalated_to": gate.escalate_to or None,
                "cascade.gate.confidence": None if gate.skipped else gate.confidence,
                "cascade.gate.band": gate.band or None,
                "cascade.gate.reasons": ",".join(gate.reasons) or None,
                "cascade.gate.skipped": gate.skipped or None,
            },
        )
        self.tracing.end(span, time.time_ns())

    def _charge(self, snapshot: Snapshot, tier: str, gate: GateInfo) -> float:
        """The discarded answer costs too: its tokens and dollars go to its tier's series."""
        if gate.tokens_in:
            self.metrics.tokens.labels(tier, "input").inc(gate.tokens_in)
        if gate.tokens_out:
            self.metrics.tokens.labels(tier, "output").inc(gate.tokens_out)
        cost = records.cost_of(snapshot, gate.tier, gate.tokens_in, gate.tokens_out)
        if cost:
            self.metrics.cost.labels(tier).inc(cost)
        return cost
