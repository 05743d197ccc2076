"""The route-drift condition on `/metrics` (extproc/config/drift.py), read at scrape time:

- `cascade_routes_in_sync`: 1 while the tiers Envoy routes match the config's, 0 when not;
- `cascade_routes_mismatch_total{outcome}`: streams whose Envoy routes another set of tiers,
  `kept` (decided with the last config Envoy can route), `restricted` (none known: the current
  config without the rules deciding tiers Envoy lacks) or `unknown` (no tier in common);
- `cascade_routes_info{envoy, config}`: the two fingerprints (value 1).

The scrape reads a bool, two strings and copies a dict of two fixed keys: no lock needed.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.config.drift import RoutesGuard

IN_SYNC = "cascade_routes_in_sync"
MISMATCH = "cascade_routes_mismatch_total"


class RoutesCollector(Collector):
    def __init__(self, guard: RoutesGuard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        guard = self._guard
        yield GaugeMetricFamily(
            IN_SYNC,
            "1 while the tiers Envoy routes match the config's, else 0",
            value=1 if guard.in_sync else 0,
        )
        mismatch = CounterMetricFamily(
            MISMATCH,
            "Streams from an Envoy that routes other tiers than the config's",
            labels=["outcome"],
        )
        for outcome, count in dict(guard.mismatches).items():
            mismatch.add_metric([outcome], count)
        yield mismatch
        info = GaugeMetricFamily(
            "cascade_routes_info",
            "Fingerprints of the tiers Envoy routes and of the config's",
            labels=["envoy", "config"],
        )
        info.add_metric([guard.envoy, guard.last_config], 1)
        yield info


def register(registry: CollectorRegistry, guard: RoutesGuard) -> RoutesCollector:
    collector = RoutesCollector(guard)
    registry.register(collector)
    return collector
