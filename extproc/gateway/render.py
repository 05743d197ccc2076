"""Render the Envoy bootstrap from the cascade config, so tiers and routes cannot drift.

The config is assembled as plain data, parsed into the typed `Bootstrap` message of xds-protos
(an unknown field or a wrong type fails here, not in Envoy), and written back out as YAML.

What it renders (docs/envoy.md explains each choice):
- early header mutation removing every client-sent `x-cascade-*` header before route matching;
- the ext_proc filter: request headers SEND, body BUFFERED, response phases off, fail-open,
  a deliberate message timeout, an allow-list of headers the server may set;
- one route per tier matching `x-cascade-tier`, plus a tier-less default route to the cheapest
  tier (taken before classification and whenever the classifier is unavailable);
- LLM-sized route timeouts, a raised request body limit, response headers naming the tier
  and the cluster that served.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

# Imported for their descriptors: `@type` URLs in the document resolve against them.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (  # noqa: F401
    header_mutation_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.retry.priority.previous_priorities.v3 import (  # noqa: F401
    previous_priorities_config_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from extproc.config.snapshot import Backend, Snapshot, Tier, fallback_chain
from extproc.core import headers
from extproc.routing.processor import RESPONSE_ATTRIBUTES

EXT_PROC_CLUSTER = "cascade_extproc"
#: The second classifier deployment (`envoy.ext_proc_canary.mode: route`).
EXT_PROC_CANARY = "cascade_extproc_canary"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
TYPE = "type.googleapis.com/"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
EARLY_HEADER_MUTATION = (
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)

ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "tier": "%REQ(x-cascade-tier)%",
    "served_tier": "%UPSTREAM_METADATA(cascade:tier)%",
    "served_model": "%UPSTREAM_METADATA(cascade:model)%",
    "classifier": "%REQ(x-cascade-classifier)%",
    "reason": "%REQ(x-cascade-reason)%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "upstream": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "duration_ms": "%DURATION%",
    "request_id": "%REQ(x-request-id)%",
}


def tier_cluster(tier: Tier) -> str:
    return f"tier_{tier.name}"


def _socket(address: str) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _is_ip(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ms(value: int) -> str:
    return f"{value / 1000:.3f}s"


def _grpc_service(
    message_timeout_ms: int, metadata: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The gRPC service of both ext_proc filters (classifier and per-attempt upstream)."""
    service: dict[str, Any] = {
        "envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER},
        "timeout": _ms(message_timeout_ms * 2),
    }
    if metadata:
        service["initial_metadata"] = metadata
    return service


def ext_proc_filter(snapshot: Snapshot) -> dict[str, Any]:
    settings = snapshot.envoy
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": _grpc_service(settings.message_timeout_ms),
            "failure_mode_allow": True,
            "message_timeout": _ms(settings.message_timeout_ms),
            "forward_rules": forwarded_headers(snapshot),
            **response_processing(snapshot),
            "route_cache_action": "DEFAULT",
            "mutation_rules": {
                "disallow_all": True,
                "allow_expression": {
                    "regex": "^(x-cascade-.*|content-length|content-type|traceparent|tracestate)$"
                },
            },
            "stat_prefix": "cascade",
        },
    }


def forwarded_headers(snapshot: Snapshot) -> dict[str, Any]:
    """Send the classifier only the request headers it reads.

    Less to encode, send and decode on every request, and credentials (`authorization`,
    API keys, cookies) never reach it at all.
    """
    names = [
        headers.PATH,
        headers.METHOD,
        headers.REQUEST_ID,
        headers.CONTENT_TYPE,
        "traceparent",
        "tracestate",
        *snapshot.telemetry.user_key_headers,
    ]
    if snapshot.canary is not None:
        names.append(snapshot.canary.key_header)
    unique = list(dict.fromkeys(name.lower() for name in names))
    return {
        "allowed_headers": {
            "patterns": [{"exact": name} for name in unique] + [{"prefix": headers.PREFIX}]
        }
    }


def response_processing(snapshot: Snapshot) -> dict[str, Any]:
    """`processing_mode` (+ `response_attributes`) of the classifier's ext_proc filter.

    With `telemetry.response_processing` the server sees each response body chunk (STREAMED,
    answered at once, so SSE stays incremental) for TTFT, usage and cost; the first chunk carries
    Envoy's attributes (status, cluster, the chosen host's `cascade.tier` metadata), so the
    response headers need no round trip of their own (SKIP). Off: request phases only.
    """
    observe = snapshot.telemetry.response_processing
    mode = {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "response_header_mode": "SKIP",
        "response_body_mode": "STREAMED" if observe else "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    if not observe:
        return {"processing_mode": mode}
    return {"processing_mode": mode, "response_attributes": list(RESPONSE_ATTRIBUTES)}


def upstream_ext_proc_filter(snapshot: Snapshot, *, rewrite: bool) -> dict[str, Any]:
    """The per-attempt (upstream) ext_proc: runs after the load balancer picked a host.

    The same server answers it in its upstream role (gRPC metadata `x-cascade-role: upstream`):
    it reads the host's metadata (`cascade.tier`, `cascade.model`), counts a fallback when the
    host's tier is not the decided one, and with `rewrite` sets the body's `model` to the
    host's model (a retry moved from strong to weak must not ask weak for the strong model).
    """
    settings = snapshot.envoy
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": _grpc_service(
                settings.message_timeout_ms,
                [{"key": headers.ROLE_METADATA, "value": headers.ROLE_UPSTREAM}],
            ),
            # Unreachable server: the attempt goes out unchanged rather than failing.
            "failure_mode_allow": True,
            "message_timeout": _ms(settings.message_timeout_ms),
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED" if rewrite else "NONE",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "request_attributes": ["xds.upstream_host_metadata", "upstream.address"],
            "mutation_rules": {
                "disallow_all": True,
                "allow_expression": {"regex": "^(x-cascade-.*|content-length)$"},
            },
            "stat_prefix": "cascade_upstream",
        },
    }


def _upstream_filters(snapshot: Snapshot, *, rewrite: bool) -> dict[str, Any]:
    return {
        HTTP_PROTOCOL_OPTIONS: {
            "@type": TYPE + HTTP_PROTOCOL_OPTIONS,
            "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [
                upstream_ext_proc_filter(snapshot, rewrite=rewrite),
                {
                    "name": "envoy.filters.http.upstream_codec",
                    "typed_config": {
                        "@type": TYPE
                        + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                    },
                },
            ],
        }
    }


# ---------------------------------------------------------------------------------------------
# routes


def group_cluster(tier: Tier, group: str) -> str:
    return f"tier_{tier.name}_{group}"


def fallback_cluster(base: str) -> str:
    return f"{base}_fallback"


def _route_targets(snapshot: Snapshot, tier: Tier) -> list[tuple[str, int]]:
    """(cluster, weight) the tier's route sends to: its backend groups (two or more = a
    backend canary), each wrapped in a fallback aggregate when the tier has a fallback."""
    groups = tier.backend_groups
    if len(groups) >= 2:
        bases = [
            (group_cluster(tier, name), sum(b.weight for b in members)) for name, members in groups
        ]
    else:
        bases = [(tier_cluster(tier), 100)]
    if tier.fallback is None:
        return bases
    return [(fallback_cluster(name), weight) for name, weight in bases]


def retry_policy(snapshot: Snapshot, *, fallback: bool) -> dict[str, Any]:
    retries = snapshot.envoy.retries
    policy: dict[str, Any] = {
        "retry_on": ",".join(retries.retry_on),
        "num_retries": retries.num_retries,
        "retry_back_off": {
            "base_interval": _ms(retries.backoff_base_ms),
            "max_interval": _ms(retries.backoff_max_ms),
        },
        # Prefer another host on a retry (a replica that is not the one that just failed).
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": TYPE
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }
    if retries.status_codes:
        policy["retriable_status_codes"] = list(retries.status_codes)
    if retries.retry_after_max_ms:
        policy["rate_limited_retry_back_off"] = {
            "reset_headers": [{"name": "retry-after", "format": "SECONDS"}],
            "max_interval": _ms(retries.retry_after_max_ms),
        }
    if retries.per_try_timeout_s:
        policy["per_try_timeout"] = f"{retries.per_try_timeout_s}s"
    if fallback:
        # The aggregate cluster lists the tier first (priority 0) and its fallbacks after;
        # this excludes a priority once it failed, so the retry goes to the next tier.
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": TYPE
                + "envoy.extensions.retry.priority.previous_priorities.v3"
                + ".PreviousPrioritiesConfig",
                "update_frequency": retries.attempts_per_tier,
            },
        }
    return policy


def route_action(snapshot: Snapshot, tier: Tier, *, mirror: bool = True) -> dict[str, Any]:
    targets = _route_targets(snapshot, tier)
    action: dict[str, Any] = {}
    if len(targets) == 1:
        action["cluster"] = targets[0][0]
    else:
        split: dict[str, Any] = {
            "clusters": [{"name": name, "weight": weight} for name, weight in targets]
        }
        if tier.sticky_header:
            # One user stays on one backend group: the weight split hashes this header.
            split["use_hash_policy"] = True
            action["hash_policy"] = [{"header": {"header_name": tier.sticky_header}}]
        action["weighted_clusters"] = split
    action["timeout"] = f"{snapshot.envoy.route_timeout_s}s"
    action["retry_policy"] = retry_policy(snapshot, fallback=tier.fallback is not None)
    if mirror and tier.mirror is not None and tier.mirror.percent > 0:
        target = snapshot.tier(tier.mirror.tier)
        action["request_mirror_policies"] = [
            {
                "cluster": tier_cluster(target),
                "runtime_fraction": {
                    "default_value": {
                        "numerator": round(tier.mirror.percent * 10_000),
                        "denominator": "MILLION",
                    }
                },
                # Tag the shadow copy; it keeps the original's x-request-id (the join key).
                "request_headers_mutations": [
                    {
                        "append": {
                            "header": {"key": headers.SHADOW_OF, "value": tier.name},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }
                    }
                ],
            }
        ]
    return action


def routes(snapshot: Snapshot) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {
            "name": f"tier_{tier.name}",
            "match": {
                "prefix": "/",
                "headers": [{"name": headers.TIER, "string_match": {"exact": tier.name}}],
            },
            "route": route_action(snapshot, tier),
        }
        for tier in snapshot.tiers
    ]
    default = snapshot.tier(snapshot.default_tier)
    canary = snapshot.envoy.ext_proc_canary
    if canary is not None and canary.mode == "route":
        # Matched before classification (no tier header yet): they choose which classifier
        # deployment answers, then the tier routes above take over.
        use_canary = {
            EXT_PROC_FILTER: {
                "@type": TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "overrides": {"grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CANARY}}},
            }
        }
        result.append(
            {
                "name": "classifier_canary_pinned",
                "match": {
                    "prefix": "/",
                    "headers": [{"name": canary.pin_header, "present_match": True}],
                },
                "route": route_action(snapshot, default, mirror=False),
                "typed_per_filter_config": use_canary,
            }
        )
        result.append(
            {
                "name": "classifier_canary",
                "match": {
                    "prefix": "/",
                    "runtime_fraction": {
                        "default_value": {
                            "numerator": round(canary.percent * 10_000),
                            "denominator": "MILLION",
                        },
                        "runtime_key": canary.runtime_key,
                    },
                },
                "route": route_action(snapshot, default, mirror=False),
                "typed_per_filter_config": use_canary,
            }
        )
    result.append(
        {
            # Matched before the classifier runs, and used as is when it fails open.
            "name": "default_tier",
            "match": {"prefix": "/"},
            "route": route_action(snapshot, default, mirror=False),
        }
    )
    return result


def _header(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


#: What the client learns about its request. The served tier and model come from the metadata
#: of the host that answered, so a request that fell back says so.
RESPONSE_HEADERS = [
    _header(headers.TIER, f"%REQ({headers.TIER})%"),
    _header("x-cascade-served-tier", "%UPSTREAM_METADATA(cascade:tier)%"),
    _header("x-cascade-served-model", "%UPSTREAM_METADATA(cascade:model)%"),
    _header("x-cascade-served-cluster", "%UPSTREAM_CLUSTER%"),
    _header(headers.CLASSIFIER, f"%REQ({headers.CLASSIFIER})%"),
    _header(headers.REASON, f"%REQ({headers.REASON})%"),
]


def connection_manager(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "@type": TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "cascade_ingress",
        "codec_type": "AUTO",
        # Runs before any route matching: a spoofed tier must never choose the route, also
        # while the classifier is down (a header_mutation HTTP filter would be too late).
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": TYPE + EARLY_HEADER_MUTATION,
                    "mutations": [{"remove_on_match": {"key_matcher": {"prefix": headers.PREFIX}}}],
                },
            }
        ],
        "stream_idle_timeout": f"{snapshot.envoy.route_timeout_s}s",
        # The client gets x-request-id: the key that joins its answer with a shadow copy.
        "always_set_request_id_in_response": True,
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"json_format": ACCESS_LOG_FORMAT},
                },
            }
        ],
        "route_config": {
            "name": "cascade",
            "virtual_hosts": [
                {
                    "name": "llm",
                    "domains": ["*"],
                    "request_body_buffer_limit": snapshot.envoy.max_request_bytes,
                    "include_request_attempt_count": True,
                    "routes": routes(snapshot),
                    "response_headers_to_add": RESPONSE_HEADERS,
                }
            ],
        },
        "http_filters": [
            ext_proc_filter(snapshot),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }


# ---------------------------------------------------------------------------------------------
# clusters


def _ext_proc_cluster(
    snapshot: Snapshot, name: str, endpoints: list[tuple[str, int | None]]
) -> dict[str, Any]:
    lb_endpoints = []
    for address, weight in endpoints:
        endpoint: dict[str, Any] = {"endpoint": {"address": _socket(address)}}
        if weight is not None:
            endpoint["load_balancing_weight"] = weight
        lb_endpoints.append(endpoint)
    return {
        "name": name,
        # A Kubernetes Service name needs DNS; STATIC takes IP addresses only.
        "type": "STATIC" if all(_is_ip(a) for a, _ in endpoints) else "STRICT_DNS",
        "connect_timeout": _ms(snapshot.envoy.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
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
    return {
        "thresholds": [
            {"priority": "DEFAULT", "max_retries": snapshot.envoy.retries.max_concurrent},
            {"priority": "HIGH", "max_retries": snapshot.envoy.retries.max_concurrent},
        ]
    }


def _outlier_detection(snapshot: Snapshot) -> dict[str, Any] | None:
    outlier = snapshot.envoy.outlier_detection
    if not outlier.enabled:
        return None
    return {
        # Connect failures count as 5xx here (split_external_local_origin_errors is off).
        "consecutive_5xx": outlier.consecutive_5xx,
        "interval": _ms(outlier.interval_ms),
        "base_ejection_time": _ms(outlier.base_ejection_ms),
        # Envoy's default of 10 % never ejects the only host of a small tier.
        "max_ejection_percent": outlier.max_ejection_percent,
    }


def _backend_cluster(
    snapshot: Snapshot, name: str, tier: Tier, backends: tuple[Backend, ...], *, rewrite: bool
) -> dict[str, Any]:
    endpoints = [
        {
            "endpoint": {"address": _socket(f"{b.address}:{b.port}")},
            "load_balancing_weight": b.weight,
            "metadata": {"filter_metadata": {"cascade": {"model": b.model, "tier": tier.name}}},
        }
        for b in backends
    ]
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": _ms(snapshot.envoy.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": _circuit_breakers(snapshot),
    }
    outlier = _outlier_detection(snapshot)
    if outlier is not None:
        cluster["outlier_detection"] = outlier
    if rewrite:
        cluster["typed_extension_protocol_options"] = _upstream_filters(snapshot, rewrite=True)
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
        if tier.fallback is None:
            continue
        chain = fallback_chain(snapshot, tier.name)[1:]
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
                    "connect_timeout": _ms(snapshot.envoy.connect_timeout_ms),
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
                    "typed_extension_protocol_options": _upstream_filters(
                        snapshot, rewrite=snapshot.server.rewrite_model
                    ),
                }
            )
    return clusters


def bootstrap(snapshot: Snapshot) -> dict[str, Any]:
    """The whole Envoy bootstrap as plain data."""
    return {
        "admin": {"address": _socket(snapshot.envoy.admin)},
        # The admin layer lets `POST /runtime_modify` change runtime keys live (the classifier
        # canary's route fraction); nothing else is set at runtime.
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "cascade_http",
                    "address": _socket(snapshot.envoy.listen),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager(snapshot),
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                *ext_proc_clusters(snapshot),
                *tier_clusters(snapshot),
                *fallback_clusters(snapshot),
            ],
        },
    }


def typed_bootstrap(snapshot: Snapshot) -> bootstrap_pb2.Bootstrap:
    """Parse the rendered data into the typed message (raises on any unknown field)."""
    message = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(bootstrap(snapshot), message)
    return message


def render_yaml(snapshot: Snapshot) -> str:
    message = typed_bootstrap(snapshot)
    data = _plain(json_format.MessageToDict(message, preserving_proto_field_name=True))
    header = (
        "# Rendered by `cascade render envoy` from the cascade config; do not edit by hand.\n"
        f"# Tiers: {', '.join(snapshot.tier_names)}. Re-render after changing tiers or backends.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    return value


_MAP_FIELDS = {"json_format", "filter_metadata", "typed_extension_protocol_options"}


def _plain(value: Any) -> Any:
    """OrderedDicts from json_format → dicts (64-bit integers stay strings, as in proto3 JSON)."""
    if isinstance(value, dict):
        # protobuf Struct/map fields come out in hash order: sort them for stable output
        return {
            key: _sorted(_plain(item)) if key in _MAP_FIELDS else _plain(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
