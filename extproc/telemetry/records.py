"""Pure builders of what telemetry writes: decision-log records, span attributes, costs, and the
label values that may reach Prometheus (never an unbounded, caller-chosen string).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from extproc.config.snapshot import Snapshot
from extproc.core.classify import Decision
from extproc.routing.observer import DecisionInfo, RequestInfo, ResponseInfo
from extproc.telemetry.misroute import FALSE_NEGATIVE, RequestSummary, RetryMatch
from extproc.telemetry.tracing import langfuse_tags

SIGNAL_RETRY = "retry"
SIGNAL_FEEDBACK = "feedback"
#: The label value of anything Envoy (or a direct caller) reports that the config does not know.
OTHER = "other"


def cost_of(snapshot: Snapshot, tier: str, tokens_in: int | None, tokens_out: int | None) -> float:
    """Dollars for an answer: token prices, plus `per_hour` spread over output throughput."""
    if tier not in snapshot.tier_names:
        return 0.0
    price = snapshot.tier(tier).price
    tin, tout = tokens_in or 0, tokens_out or 0
    return (
        price.input_per_mtok * tin / 1e6
        + price.output_per_mtok * tout / 1e6
        + price.per_hour / 3600 * tout / snapshot.telemetry.tokens_per_second
    )


def cluster_label(snapshot: Snapshot, cluster: str) -> str:
    """A cluster name as a metric label: only the rendered `tier_<tier>[_...]` names, else `other`.

    The name comes from Envoy's attributes, which a direct ext_proc caller can fabricate: an
    unchecked label would let it create unbounded metric series.
    """
    if not cluster:
        return ""
    if cluster.startswith("tier_") and len(cluster) <= 128:
        rest = cluster[5:]
        for tier in snapshot.tier_names:
            if rest == tier or rest.startswith(tier + "_"):
                return cluster
    return OTHER


def status_label(status: int) -> str:
    """An HTTP status as a metric label: 100–599, `0` for none seen, else `other`."""
    if status == 0 or 100 <= status <= 599:
        return str(status)
    return OTHER


def tier_label(snapshot: Snapshot, tier: str) -> str:
    return tier if not tier or tier in snapshot.tier_names else OTHER


def score_attributes(decision: Decision) -> dict[str, Any]:
    """A scorer step's span attributes (none without one): score, threshold, feature names."""
    if decision.score is None:
        return {}
    return {
        "cascade.score": decision.score,
        "cascade.score_threshold": decision.threshold,
        "cascade.score_features": list(decision.features),
    }


def decided_attributes(
    request: RequestInfo, decided: DecisionInfo, user_hash: str
) -> dict[str, Any]:
    """Span attributes of a decision."""
    decision = decided.decision
    return {
        "cascade.tier": decision.tier,
        "cascade.classifier": decision.classifier,
        "cascade.rule": decision.rule,
        "cascade.reason": decision.reason,
        "cascade.keywords": list(decision.keywords),
        "cascade.chars": decision.chars,
        "cascade.bytes": decision.bytes,
        "cascade.messages": decision.messages,
        **score_attributes(decision),
        "cascade.classify_us": round(decided.seconds * 1e6, 1),
        "cascade.request_id": request.request_id,
        "http.request.method": request.method,
        "url.path": request.path,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": decided.model or None,
        "langfuse.trace.tags": langfuse_tags(
            decision.tier,
            decision.keywords,
            decision.messages,
            decision.classifier,
            decision.rule,
        ),
        "langfuse.user.id": user_hash or None,
    }


def finished_attributes(
    request: RequestInfo,
    decided: DecisionInfo | None,
    response: ResponseInfo,
    cost: float | None,
    match: RetryMatch | None,
    served: str,
) -> dict[str, Any]:
    """Span attributes of an answer."""
    decision = decided.decision if decided is not None else None
    attributes: dict[str, Any] = {
        "cascade.served_tier": served or None,
        "cascade.served_cluster": response.cluster or None,
        "cascade.fallback": bool(decision and served and served != decision.tier),
        "cascade.complete": response.complete,
        "cascade.cost_usd": cost,
        "cascade.fn_suspect": match is not None,
        "gen_ai.usage.input_tokens": response.tokens_in,
        "gen_ai.usage.output_tokens": response.tokens_out,
        "gen_ai.response.model": response.model or None,
    }
    if response.status:
        attributes["http.response.status_code"] = response.status
    if response.first_chunk is not None:
        attributes["cascade.ttft_ms"] = round((response.first_chunk - request.started) * 1e3, 3)
    return attributes


def request_record(
    request: RequestInfo,
    decided: DecisionInfo | None,
    response: ResponseInfo,
    *,
    cost: float | None,
    match: RetryMatch | None,
    user: str,
    served: str,
    trace_id: str,
    prompt: Callable[[], list[dict[str, str]]] | None,
) -> dict[str, Any]:
    """The decision-log record of one request (`prompt` only with `capture_prompts`)."""
    decision = decided.decision if decided is not None else None
    record: dict[str, Any] = {
        "kind": "request",
        "id": request.request_id,
        "time": iso(request.started_ns),
        "user": user or None,
        "tier": decision.tier if decision else None,
        "classifier": decision.classifier if decision else None,
        "rule": decision.rule if decision else None,
        "reason": decision.reason if decision else None,
        "keywords": list(decision.keywords) if decision else [],
        "chars": decision.chars if decision else 0,
        "bytes": decision.bytes if decision else 0,
        "messages": decision.messages if decision else 0,
        "model": (decided.model if decided else "") or None,
        "served_tier": served or None,
        "cluster": response.cluster or None,
        "status": response.status or None,
        "complete": response.complete,
        "fallback": bool(decision and served and served != decision.tier),
        "ttft_ms": _ms(response.first_chunk, request.started),
        "duration_ms": _ms(response.ended, request.started),
        "tokens_in": response.tokens_in,
        "tokens_out": response.tokens_out,
        "cost": cost,
        "fn_suspect": match is not None,
        "fp_suspect": False,
        "signals": [SIGNAL_RETRY] if match is not None else [],
        "trace_id": trace_id or None,
    }
    if decision is not None and decision.score is not None:
        record["score"] = decision.score
        record["threshold"] = decision.threshold
        record["score_features"] = list(decision.features)
    if match is not None:
        record["retry_of"] = match.request_id
        record["similarity"] = round(match.similarity, 3)
    if prompt is not None:
        record["messages_text"] = prompt()
    return record


def feedback_record(
    summary: RequestSummary, score: int, comment: str, suspicion: str, now_ns: int
) -> dict[str, Any]:
    """The decision-log record of one `SubmitFeedback` (the comment is added by the caller)."""
    return {
        "kind": "feedback",
        "id": summary.id,
        "time": iso(now_ns),
        "request_time": iso(int(summary.time * 1e9)),
        "user": summary.user or None,
        "tier": summary.tier,
        "classifier": summary.classifier,
        "rule": summary.rule,
        "chars": summary.chars,
        "messages": summary.messages,
        "served_tier": summary.served_tier,
        "status": summary.status or None,
        "tokens_in": summary.tokens_in,
        "tokens_out": summary.tokens_out,
        "cost": summary.cost,
        "score": score,
        "comment_chars": len(comment),
        "fn_suspect": suspicion == FALSE_NEGATIVE,
        "fp_suspect": bool(suspicion) and suspicion != FALSE_NEGATIVE,
        "signals": [SIGNAL_FEEDBACK] if suspicion else [],
    }


def iso(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(end: float | None, start: float) -> float | None:
    return None if end is None else round((end - start) * 1e3, 3)
