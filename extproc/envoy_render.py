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

from typing import Any

import yaml

# Imported for their descriptors: `@type` URLs in the document resolve against them.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (  # noqa: F401
    header_mutation_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from extproc import headers
from extproc.config import Snapshot, Tier

EXT_PROC_CLUSTER = "cascade_extproc"
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


def _ms(value: int) -> str:
    return f"{value / 1000:.3f}s"


def ext_proc_filter(snapshot: Snapshot) -> dict[str, Any]:
    settings = snapshot.envoy
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER},
                "timeout": _ms(settings.message_timeout_ms * 2),
            },
            "failure_mode_allow": True,
            "message_timeout": _ms(settings.message_timeout_ms),
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
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


def routes(snapshot: Snapshot) -> list[dict[str, Any]]:
    timeout = f"{snapshot.envoy.route_timeout_s}s"
    result: list[dict[str, Any]] = []
    for tier in snapshot.tiers:
        result.append(
            {
                "name": f"tier_{tier.name}",
                "match": {
                    "prefix": "/",
                    "headers": [{"name": headers.TIER, "string_match": {"exact": tier.name}}],
                },
                "route": {"cluster": tier_cluster(tier), "timeout": timeout},
                "response_headers_to_add": _served_by(f"%REQ({headers.TIER})%"),
            }
        )
    cheapest = snapshot.tiers[0]
    result.append(
        {
            # Matched before the classifier runs, and used as is when it fails open.
            "name": "default_cheapest_tier",
            "match": {"prefix": "/"},
            "route": {"cluster": tier_cluster(cheapest), "timeout": timeout},
            "response_headers_to_add": _served_by(cheapest.name),
        }
    )
    return result


def _served_by(tier: str) -> list[dict[str, Any]]:
    return [
        {
            "header": {"key": "x-cascade-served-tier", "value": tier},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
        {
            "header": {"key": "x-cascade-served-cluster", "value": "%UPSTREAM_CLUSTER%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
        {
            "header": {"key": "x-cascade-classifier", "value": "%REQ(x-cascade-classifier)%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
        {
            "header": {"key": "x-cascade-reason", "value": "%REQ(x-cascade-reason)%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
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


def ext_proc_cluster(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "name": EXT_PROC_CLUSTER,
        "type": "STATIC",
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
            "cluster_name": EXT_PROC_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(a)}} for a in snapshot.envoy.ext_proc
                    ]
                }
            ],
        },
    }


def tier_clusters(snapshot: Snapshot) -> list[dict[str, Any]]:
    clusters = []
    for tier in snapshot.tiers:
        endpoints = [
            {
                "endpoint": {"address": _socket(f"{b.address}:{b.port}")},
                "load_balancing_weight": b.weight,
                "metadata": {"filter_metadata": {"cascade": {"model": b.model, "tier": tier.name}}},
            }
            for b in tier.backends
        ]
        clusters.append(
            {
                "name": tier_cluster(tier),
                "type": "STRICT_DNS",
                "connect_timeout": _ms(snapshot.envoy.connect_timeout_ms),
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": {
                    "cluster_name": tier_cluster(tier),
                    "endpoints": [{"lb_endpoints": endpoints}] if endpoints else [],
                },
            }
        )
    return clusters


def bootstrap(snapshot: Snapshot) -> dict[str, Any]:
    """The whole Envoy bootstrap as plain data."""
    return {
        "admin": {"address": _socket(snapshot.envoy.admin)},
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
            "clusters": [ext_proc_cluster(snapshot), *tier_clusters(snapshot)],
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
