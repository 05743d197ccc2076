"""Prometheus metrics of the server and the `/metrics` HTTP endpoint.

Names and labels are a contract (alert rules, the Grafana dashboard and `cascade canary` query
them); docs/observability.md lists every series. Each `Metrics` owns its registry, so tests and
several servers in one process do not share counters.

Label conventions: `tier` is the decided tier; `served_tier` the tier whose backend answered
(different after a fallback); token, cost and TTFT series are labelled with the tier that
served, since that model produced the tokens. `classifier` is the classifier version that
decided the request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

from extproc.config.snapshot import Snapshot
from extproc.core.hostport import parse_listen
from extproc.telemetry.gate_telemetry import GateMetrics

logger = logging.getLogger(__name__)

# One `_created` series per counter doubles the scrape for nothing here.
disable_created_metrics()  # type: ignore[no-untyped-call]

DECISIONS = "cascade_decisions_total"
CLASSIFY_DURATION = "cascade_classify_duration_seconds"
PARSE_FAILURES = "cascade_parse_failures_total"
CLASSIFIER_ERRORS = "cascade_classifier_errors_total"
CONFIG_RELOADS = "cascade_config_reloads_total"
CONFIG_INFO = "cascade_config_info"
INFLIGHT = "cascade_inflight_streams"
RESPONSES = "cascade_responses_total"
FALLBACKS = "cascade_fallbacks_total"
TTFT = "cascade_ttft_seconds"
RESPONSE_DURATION = "cascade_response_duration_seconds"
TOKENS = "cascade_tokens_total"
USAGE_MISSING = "cascade_usage_missing_total"
COST = "cascade_cost_dollars_total"
PRICE_PER_HOUR = "cascade_tier_price_per_hour_dollars"
MISROUTE = "cascade_misroute_suspected_total"
FEEDBACK = "cascade_feedback_total"
API_REFUSED = "cascade_api_refused_total"
TELEMETRY_DROPPED = "cascade_telemetry_dropped_total"
STATE_ERRORS = "cascade_state_errors_total"

#: 10 µs .. 50 ms: the whole classification normally takes 20-80 µs.
CLASSIFY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
)
TTFT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    1.5,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    60,
)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.gate = GateMetrics(reg)  # the confidence gate's series (telemetry/gate_telemetry.py)
        self.decisions = Counter(
            DECISIONS, "Routing decisions", ["tier", "classifier", "rule"], registry=reg
        )
        self.classify_duration = Histogram(
            CLASSIFY_DURATION,
            "Time to parse and classify one request body",
            buckets=CLASSIFY_BUCKETS,
            registry=reg,
        )
        self.parse_failures = Counter(
            PARSE_FAILURES,
            "Request bodies that could not be classified (invalid_body, not_utf8, too_large)",
            ["kind"],
            registry=reg,
        )
        self.classifier_errors = Counter(
            CLASSIFIER_ERRORS,
            "Classifications that raised (routed to the default tier)",
            registry=reg,
        )
        self.config_reloads = Counter(
            CONFIG_RELOADS, "Config reload attempts", ["result"], registry=reg
        )
        self.config_info = Gauge(
            CONFIG_INFO,
            "The config in use (value 1)",
            ["digest", "classifier", "canary"],
            registry=reg,
        )
        self.inflight = Gauge(INFLIGHT, "Open ext_proc streams", registry=reg)
        self.responses = Counter(
            RESPONSES,
            "Answers seen on the response path",
            ["tier", "served_tier", "cluster", "status", "classifier"],
            registry=reg,
        )
        self.fallbacks = Counter(
            FALLBACKS,
            "Answers served by another tier than the decided one",
            ["from_tier", "to_tier"],
            registry=reg,
        )
        self.ttft = Histogram(
            TTFT,
            "Request headers at the gateway to the first response body chunk",
            ["tier", "classifier"],
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.response_duration = Histogram(
            RESPONSE_DURATION,
            "Request headers at the gateway to the end of the answer",
            ["tier", "classifier"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            TOKENS, "Tokens from the answers' usage", ["tier", "kind"], registry=reg
        )
        self.usage_missing = Counter(
            USAGE_MISSING,
            "Complete answers without a usage object (streams: ask for include_usage)",
            ["tier"],
            registry=reg,
        )
        self.cost = Counter(
            COST, "Cost of the answers from per-tier prices, in dollars", ["tier"], registry=reg
        )
        self.price_per_hour = Gauge(
            PRICE_PER_HOUR, "Configured capacity price of a tier, $/hour", ["tier"], registry=reg
        )
        self.misroute = Counter(
            MISROUTE,
            "Suspected misroutes (false_negative: should have gone higher)",
            ["kind", "signal", "classifier"],
            registry=reg,
        )
        self.api_refused = Counter(
            API_REFUSED,
            "cascade.v1 calls refused (disabled, unauthenticated, rate_limited, duplicate)",
            ["method", "reason"],
            registry=reg,
        )
        self.feedback = Counter(
            FEEDBACK,
            "Feedback accepted through cascade.v1 (known requests)",
            ["score"],
            registry=reg,
        )
        self.telemetry_dropped = Counter(
            TELEMETRY_DROPPED,
            "Telemetry records dropped because a background queue was full",
            ["sink"],
            registry=reg,
        )
        self.state_errors = Counter(
            STATE_ERRORS, "Failed calls to the misroute state backend", ["operation"], registry=reg
        )
        ProcessCollector(registry=reg)

    def track_inflight(self, count: Callable[[], float]) -> None:
        self.inflight.set_function(count)

    def configured(self, snapshot: Snapshot) -> None:
        """Publish what the config says: prices and the config identity."""
        self.config_info.clear()
        canary = snapshot.canary.version if snapshot.canary else ""
        self.config_info.labels(snapshot.digest, snapshot.stable, canary).set(1)
        self.price_per_hour.clear()
        for tier in snapshot.tiers:
            self.price_per_hour.labels(tier.name).set(tier.price.per_hour)

    def reloaded(self, ok: bool) -> None:
        self.config_reloads.labels("ok" if ok else "failed").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """`/metrics` over HTTP in a daemon thread (prometheus-client's WSGI server)."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        self.metrics = metrics
        self.listen = listen
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        host, port = split_listen(self.listen)
        server, thread = start_http_server(port, host, self.metrics.registry)
        self._server, self._thread = server, thread
        self.port = server.server_port
        logger.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); port 0 = any free port."""
    host, port = parse_listen(listen)
    return host, port
