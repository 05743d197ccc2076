"""Clusters: the classifier deployments, one per tier (and backend group), fallback aggregates."""

from __future__ import annotations

from typing import Any

from extproc.config.snapshot import Backend, Snapshot, Tier
from extproc.core.hostport import join_host_port
from extproc.gateway import gate
from extproc.gateway.common import (
    EXT_PROC_BUFFER_HEADROOM,
    EXT_PROC_CANARY,
    EXT_PROC_CLUSTER,
    HTTP_PROTOCOL_OPTIONS,
    TYPE,
    duration,
    fallback_cluster,
    group_cluster,
    is_ip_address,
    socket_address,
    tier_cluster,
)
from extproc.gateway.filters import upstream_filters
from extproc.gateway.providers import backend_address, tier_uses_listeners


def _ext_proc_cluster(
    snapshot: Snapshot, name: str, endpoints: list[tuple[str, int | None]]
) -> dict[str, Any]:
    lb_endpoints = []
    for address, weight in endpoints:
        endpoint: dict[str, Any] = {"endpoint": {"address": socket_address(address)}}
        if weight is not None:
            endpoint["load_balancing_weight"] = weight
        lb_endpoints.append(endpoint)
    return {
        "name": name,
        # A Kubernetes Service name needs DNS; STATIC takes IP addresses only.
        "type": "STATIC" if all(is_ip_address(a) for a, _ in endpoints) else "STRICT_DNS",
        "connect_timeout": duration(snapshot.envoy.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
        # A BUFFERED body goes to the classifier as one gRPC message on the one multiplexed
        # connection per worker: the largest allowed body must fit under this connection's high
        # watermark. Defence in depth beside SIDE_STREAM_FLOW_CONTROL (which alone prevents the
        # crash; concurrent bodies can still add up past any finite limit). A cap, not an
        # allocation; tier clusters and the listener keep Envoy's 1 MiB.
        "per_connection_buffer_limit_bytes": snapshot.envoy.max_request_bytes
        + EXT_PROC_BUFFER_HEADROOM,
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": TYPE + HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "no_traffic_interval": "2s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": lb_endpoints}],
        },
    }


def ext_proc_clusters(snapshot: Snapshot) -> list[dict[str, Any]]:
    """The classifier cluster; with `envoy.ext_proc_canary` also the canary deployment."""
    stable = list(snapshot.envoy.ext_proc)
    canary = snapshot.envoy.ext_proc_canary
    if canary is None:
        return [_ext_proc_cluster(snapshot, EXT_PROC_CLUSTER, [(a, None) for a in stable])]
    if canary.mode == "route":
        return [
            _ext_proc_cluster(snapshot, EXT_PROC_CLUSTER, [(a, None) for a in stable]),
            _ext_proc_cluster(snapshot, EXT_PROC_CANARY, [(a, None) for a in canary.addresses]),
        ]
    # One cluster, weighted endpoints: each stream is one pick, so the canary deployment
    # answers `percent` of the streams (upstream-role streams included).
    units = 10_000
    canary_share = round(canary.percent * 100)  # of 10,000
    endpoints: list[tuple[str, int | None]] = []
    if canary_share < units:
        endpoints += [(a, (units - canary_share) * len(canary.addresses)) for a in stable]
    if canary_share > 0:
        endpoints += [(a, canary_share * len(stable)) for a in canary.addresses]
    return [_ext_proc_cluster(snapshot, EXT_PROC_CLUSTER, endpoints)]


def _circuit_breakers(snapshot: Snapshot) -> dict[str, Any]:
    """A retry budget instead of a fixed `max_retries` (which it replaces): concurrent retries
    up to `budget_percent` of the cluster's active + pending requests, never fewer than
    `min_retry_concurrency`. A retry holds its slot from the moment it is scheduled, through
    its back-off (a Retry-After wait), until its attempt ends, while only attempts in flight
    count as active: the floor is what carries a 429 storm (docs/resilience.md)."""
    retries = snapshot.envoy.retries
    budget = {
        "budget_percent": {"value": retries.budget_percent},
        "min_retry_concurrency": retries.min_retry_concurrency,
    }
    return {
        "thresholds": [
            {"priority": "DEFAULT", "retry_budget": budget},
            {"priority": "HIGH", "retry_budget": budget},
        ]
    }


def _outlier_detection(snapshot: Snapshot) -> dict[str, Any] | None:
    outlier = snapshot.envoy.outlier_detection
    if not outlier.enabled:
        return None
    return {
        # Connect failures count as 5xx here (split_external_local_origin_errors is off).
        "consecutive_5xx": outlier.consecutive_5xx,
        "interval": duration(outlier.interval_ms),
        "base_ejection_time": duration(outlier.base_ejection_ms),
        # Envoy's default of 10 % never ejects the only host of a small tier.
        "max_ejection_percent": outlier.max_ejection_percent,
    }


def _backend_cluster(
    snapshot: Snapshot, name: str, tier: Tier, backends: tuple[Backend, ...], *, rewrite: bool
) -> dict[str, Any]:
    # URL backends: each an internal listener applying TLS, path, Host and credential
    # (extproc/gateway/providers.py); the endpoint metadata stays here, where retries and the
    # per-attempt model rewrite run.
    listeners = tier_uses_listeners(tier)
    endpoints = [
        {
            "endpoint": {
                "address": backend_address(tier, b)
                if listeners
                else socket_address(join_host_port(b.address, b.port))
            },
            "load_balancing_weight": b.weight,
            "metadata": {"filter_metadata": {"cascade": {"model": b.model, "tier": tier.name}}},
        }
        for b in backends
    ]
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if listeners else "STRICT_DNS",
        "connect_timeout": duration(snapshot.envoy.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": _circuit_breakers(snapshot),
    }
    outlier = _outlier_detection(snapshot)
    if outlier is not None:
        cluster["outlier_detection"] = outlier
    if rewrite:
        cluster["typed_extension_protocol_options"] = upstream_filters(snapshot, rewrite=True)
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": endpoints}] if endpoints else [],
    }
    return cluster


def tier_clusters(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Per tier: `tier_<name>` with every backend (route target, fallback and mirror member),
    plus `tier_<name>_<group>` per backend group when the tier has a backend canary."""
    rewrite = snapshot.server.rewrite_model
    mirrored = {t.mirror.tier for t in snapshot.tiers if t.mirror is not None}
    clusters = []
    for tier in snapshot.tiers:
        groups = tier.backend_groups
        # A host whose model differs from what the classifier wrote needs the per-attempt
        # rewrite: a canary group with its own model, or a mirror target (the shadow copy
        # carries the mirrored tier's model).
        own_models = any(b.model != tier.model for b in tier.backends)
        clusters.append(
            _backend_cluster(
                snapshot,
                tier_cluster(tier),
                tier,
                tier.backends,
                rewrite=rewrite and (own_models or tier.name in mirrored),
            )
        )
        if len(groups) >= 2:
            for group, members in groups:
                clusters.append(
                    _backend_cluster(
                        snapshot,
                        group_cluster(tier, group),
                        tier,
                        members,
                        rewrite=rewrite and any(b.model != tier.model for b in members),
                    )
                )
    return clusters


def fallback_clusters(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Aggregate clusters: the tier's cluster at priority 0, its fallback tiers after it."""
    clusters = []
    for tier in snapshot.tiers:
        chain = gate.members(snapshot, tier)  # fallback chain, after a gate's escalation chain
        if not chain:
            continue
        members = [tier_cluster(snapshot.tier(name)) for name in chain]
        groups = tier.backend_groups
        bases = (
            [group_cluster(tier, name) for name, _ in groups]
            if len(groups) >= 2
            else [tier_cluster(tier)]
        )
        for base in bases:
            clusters.append(
                {
                    "name": fallback_cluster(base),
                    "connect_timeout": duration(snapshot.envoy.connect_timeout_ms),
                    "lb_policy": "CLUSTER_PROVIDED",
                    "cluster_type": {
                        "name": "envoy.clusters.aggregate",
                        "typed_config": {
                            "@type": TYPE + "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                            "clusters": [base, *members],
                        },
                    },
                    "circuit_breakers": _circuit_breakers(snapshot),
                    # Filters of member clusters do not run behind an aggregate: the
                    # per-attempt model rewrite and fallback count sit here.
                    "typed_extension_protocol_options": upstream_filters(
                        snapshot,
                        rewrite=snapshot.server.rewrite_model,
                        **gate.filter_options(snapshot, tier),
                    ),
                }
            )
    return clusters
