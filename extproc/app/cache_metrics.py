"""The response cache's counters on `/metrics`, read from `CacheStore` at scrape time.

- `cascade_cache_lookups_total{result}`: `hit_exact`, `hit_semantic`, `miss`, `bypass` (the
  client's `Cache-Control`), `skip` (not cacheable: no identity, too hot, `n` > 1), `audit_exact`,
  `audit_semantic` (would-be hits sent to the backend anyway), `error`;
- `cascade_cache_stores_total{result}`: `stored` or why not (`status`, `incomplete`,
  `too_large`, `finish_reason`, `refusal`, `tool_calls`, `choices`, `empty`, `malformed`,
  `error`);
- `cascade_cache_audits_total{match,result}`: audited hits whose fresh answer `agree`d or
  `differ`ed (the false-hit rate on live traffic);
- `cascade_cache_entries`, `cascade_cache_evictions_total`, `cascade_cache_expired_total`,
  `cascade_cache_invalidated_total`, `cascade_cache_replicated_total{result}`;
- `cascade_cache_lookup_seconds` (histogram of the lookups that computed a key);
- `cascade_cache_saved_usd_total`: what the served hits would have cost on the tier that wrote
  them (token prices; `per_hour` tiers priced like `telemetry.tokens_per_second` says).

The scrape runs on the metrics server's thread and only reads numbers (no lock needed: a dict
copied while the loop adds a key is retried by `dict()` itself, and counters only grow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from extproc.config.snapshot import Snapshot
from extproc.routing.cache_store import LATENCY_BOUNDS, CacheStore
from extproc.telemetry.records import cost_of

#: the exposed names of the families dashboards and alerts read
LOOKUPS_TOTAL = "cascade_cache_lookups_total"
SAVED_USD_TOTAL = "cascade_cache_saved_usd_total"

_FAMILIES = (
    ("lookup_", LOOKUPS_TOTAL.removesuffix("_total"), "Response-cache lookups by result", "result"),
    (
        "store_",
        "cascade_cache_stores",
        "Answers offered to the response cache, by outcome",
        "result",
    ),
    ("replicated_", "cascade_cache_replicated", "Entries exchanged through Redis", "result"),
)
_SINGLE = (
    ("evicted", "cascade_cache_evictions", "Entries dropped for room (least recently used)"),
    ("expired", "cascade_cache_expired", "Entries found past their TTL"),
    ("invalidated", "cascade_cache_invalidated", "Entries dropped by an invalidation call"),
)


def _snapshot_counts(store: CacheStore) -> dict[str, int]:
    for _ in range(3):
        try:
            return dict(store.counts)
        except RuntimeError:  # resized while copying: try again
            continue
    return {}


class CacheCollector(Collector):
    def __init__(self, store: CacheStore, snapshot: Callable[[], Snapshot]) -> None:
        self._store = store
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        store = self._store
        counts = _snapshot_counts(store)
        for prefix, name, documentation, label in _FAMILIES:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for key, value in sorted(counts.items()):
                if key.startswith(prefix):
                    family.add_metric([key[len(prefix) :]], value)
            yield family
        audits = CounterMetricFamily(
            "cascade_cache_audits",
            "Audited would-be hits: did the backend's fresh answer agree with the stored one",
            labels=["match", "result"],
        )
        for key, value in sorted(counts.items()):
            if key.startswith("audit_"):
                _, match, result = key.split("_", 2)
                audits.add_metric([match, result], value)
        yield audits
        for key, name, documentation in _SINGLE:
            yield CounterMetricFamily(name, documentation, value=counts.get(key, 0))
        yield GaugeMetricFamily("cascade_cache_entries", "Entries in the cache", value=len(store))
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BOUNDS, float("inf")), list(store.latency), strict=True):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        yield HistogramMetricFamily(
            "cascade_cache_lookup_seconds",
            "Time to compute a request's cache keys and look them up",
            buckets=buckets,
            sum_value=store.latency_sum,
        )
        snapshot = self._snapshot()
        saved = sum(
            cost_of(snapshot, tier, tokens[0], tokens[1])
            for tier, tokens in list(store.saved_tokens.items())
        )
        yield CounterMetricFamily(
            SAVED_USD_TOTAL.removesuffix("_total"),
            "What the answers served from the cache would have cost on their tier",
            value=saved,
        )


def register(
    registry: CollectorRegistry, store: CacheStore, snapshot: Callable[[], Snapshot]
) -> None:
    registry.register(CacheCollector(store, snapshot))
