"""The h2 transport's counters on `/metrics`: a collector that reads `H2Stats` at scrape time.

The transport keeps plain integers (it does not import prometheus_client); this turns them into
series when Prometheus scrapes (docs/security.md, "HTTP/2 transport limits"):

- `cascade_transport_limit_hits_total{limit}`: times a peer ran into each `H2Limits` limit;
- `cascade_transport_limit{limit}`: the configured value of each limit;
- `cascade_transport_connections`, `cascade_transport_connections_accepted_total`,
  `cascade_transport_goaways_total`, `cascade_transport_buffered_bytes`,
  `cascade_transport_streams`.

The scrape runs on the metrics server's thread: it only reads integers and copies a dict whose
keys never change, so it needs no lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.transport.h2.limits import H2Limits, H2Stats

LIMIT_HITS = "cascade_transport_limit_hits"
LIMITS = "cascade_transport_limit"
CONNECTIONS = "cascade_transport_connections"


class TransportCollector(Collector):
    def __init__(self, stats: H2Stats, limits: H2Limits) -> None:
        self._stats = stats
        self._limits = [
            (item.name, float(getattr(limits, item.name))) for item in dataclasses.fields(limits)
        ]

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        hits = CounterMetricFamily(
            LIMIT_HITS, "Times a client ran into an h2 transport limit", labels=["limit"]
        )
        for name, count in dict(stats.limit_hits).items():
            hits.add_metric([name], count)
        yield hits
        configured = GaugeMetricFamily(
            LIMITS, "Configured h2 transport limits (bytes, seconds, counts)", labels=["limit"]
        )
        for name, value in self._limits:
            configured.add_metric([name], value)
        yield configured
        yield GaugeMetricFamily(CONNECTIONS, "Open HTTP/2 connections", value=stats.connections)
        yield CounterMetricFamily(
            "cascade_transport_connections_accepted",
            "HTTP/2 connections accepted",
            value=stats.connections_accepted,
        )
        yield CounterMetricFamily(
            "cascade_transport_goaways", "Connections ended with GOAWAY", value=stats.goaways
        )
        yield GaugeMetricFamily(
            "cascade_transport_buffered_bytes",
            "Bytes of partial inbound gRPC messages buffered",
            value=stats.buffered_bytes,
        )
        yield GaugeMetricFamily(
            "cascade_transport_streams", "Open h2 stream calls", value=stats.streams
        )


def register(registry: CollectorRegistry, stats: H2Stats, limits: H2Limits) -> TransportCollector:
    collector = TransportCollector(stats, limits)
    registry.register(collector)
    return collector
