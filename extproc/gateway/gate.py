"""Envoy's side of the confidence gate (`extproc.config.gate`, docs/resilience.md).

A gated tier is rendered like a tier with a fallback: its route targets an aggregate cluster
whose priorities are the tier, then its escalation chain (`Gates.chain`), then its own fallback
chain; the route retries with `previous_priorities`, so every retry moves one priority on. The
per-attempt ext_proc filter on that aggregate may change its processing mode per attempt
(`allow_mode_override`): on a gated attempt it asks for the response headers and the whole body
(held until it answers), and a failing answer gets the response header `x-cascade-escalate`,
which the route's retry policy treats as retriable (`retry_on: retriable-headers`). With
`gate.streams` (the default) the response modes are static instead (a mode override is ignored
in that mode): headers SEND, body STREAMED, body chunks sent while the headers wait, so the
server can hold a stream's start.
"""

from __future__ import annotations

from typing import Any

from extproc.config.snapshot import Snapshot, Tier, fallback_chain
from extproc.core import headers

__all__ = ["filter_options", "gated", "members", "with_gate_retries"]


def gated(snapshot: Snapshot, tier: Tier) -> bool:
    """Requests decided for `tier` may be escalated (the tier has a gate and a budget)."""
    return len(snapshot.gates.chain(tier.name)) > 1


def filter_options(snapshot: Snapshot, tier: Tier) -> dict[str, Any]:
    """`upstream_filters` arguments for the aggregate of a tier: `gate`, and `hold_ms` when the
    tier's gate also holds streamed answers (static response modes, see `filters.py`)."""
    if not gated(snapshot, tier):
        return {}
    settings = snapshot.gates.tiers[tier.name].settings
    return {"gate": True, "hold_ms": settings.hold_ms if settings.streams else None}


def members(snapshot: Snapshot, tier: Tier) -> list[str]:
    """The tiers behind `tier` in its aggregate: escalation chain first, then its fallbacks."""
    chain = list(snapshot.gates.chain(tier.name)[1:]) if gated(snapshot, tier) else []
    for name in fallback_chain(snapshot, tier.name)[1:]:
        if name not in chain and name != tier.name:
            chain.append(name)
    return chain


def with_gate_retries(policy: dict[str, Any]) -> dict[str, Any]:
    """The route's retry policy, also retrying an answer the gate marked for escalation."""
    conditions = policy["retry_on"].split(",")
    if "retriable-headers" not in conditions:
        conditions.append("retriable-headers")
    return {
        **policy,
        "retry_on": ",".join(conditions),
        "retriable_headers": [{"name": headers.ESCALATE, "present_match": True}],
    }
