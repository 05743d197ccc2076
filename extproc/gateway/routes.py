"""Routes (one per tier, the default route, retries, mirrors) and the HTTP connection manager."""

from __future__ import annotations

from typing import Any

from extproc.config.snapshot import Snapshot, Tier
from extproc.core import headers
from extproc.gateway import gate
from extproc.gateway.common import (
    EARLY_HEADER_MUTATION,
    EXT_PROC_CANARY,
    EXT_PROC_FILTER,
    TYPE,
    duration,
    fallback_cluster,
    group_cluster,
    header_value,
    tier_cluster,
)
from extproc.gateway.filters import body_filter, ext_proc_filter

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


def route_targets(snapshot: Snapshot, tier: Tier) -> list[tuple[str, int]]:
    """(cluster, weight) the tier's route sends to: its backend groups (two or more = a
    backend canary), each wrapped in a fallback aggregate when the tier has a fallback."""
    groups = tier.backend_groups
    if len(groups) >= 2:
        bases = [
            (group_cluster(tier, name), sum(b.weight for b in members)) for name, members in groups
        ]
    else:
        bases = [(tier_cluster(tier), 100)]
    if not gate.members(snapshot, tier):  # neither a fallback nor a gate's escalation
        return bases
    return [(fallback_cluster(name), weight) for name, weight in bases]


def retry_policy(snapshot: Snapshot, *, fallback: bool) -> dict[str, Any]:
    retries = snapshot.envoy.retries
    policy: dict[str, Any] = {
        "retry_on": ",".join(retries.retry_on),
        "num_retries": retries.num_retries,
        "retry_back_off": {
            "base_interval": duration(retries.backoff_base_ms),
            "max_interval": duration(retries.backoff_max_ms),
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
            "max_interval": duration(retries.retry_after_max_ms),
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
    targets = route_targets(snapshot, tier)
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
    action["retry_policy"] = retry_policy(snapshot, fallback=bool(gate.members(snapshot, tier)))
    if gate.gated(snapshot, tier):
        action["retry_policy"] = gate.with_gate_retries(action["retry_policy"])
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
    # The tier's own limits (a slow hosted model, a fast local one).
    if tier.timeout_s:
        action["timeout"] = f"{tier.timeout_s}s"
    if tier.per_try_timeout_s:
        action["retry_policy"]["per_try_timeout"] = f"{tier.per_try_timeout_s}s"
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


#: What the client learns about its request. The served tier and model come from the metadata
#: of the host that answered, so a request that fell back says so.
RESPONSE_HEADERS = [
    header_value(headers.TIER, f"%REQ({headers.TIER})%"),
    header_value("x-cascade-served-tier", "%UPSTREAM_METADATA(cascade:tier)%"),
    header_value("x-cascade-served-model", "%UPSTREAM_METADATA(cascade:model)%"),
    header_value("x-cascade-served-cluster", "%UPSTREAM_CLUSTER%"),
    header_value(headers.CLASSIFIER, f"%REQ({headers.CLASSIFIER})%"),
    header_value(headers.REASON, f"%REQ({headers.REASON})%"),
    # the response cache's verdict (miss, bypass, skip, audit); absent when the cache is off
    header_value(headers.CACHE, f"%REQ({headers.CACHE})%"),
]


def _openai_error(message: str, kind: str) -> dict[str, Any]:
    """An OpenAI-style error body for one of Envoy's own replies (`%...%` are Envoy's)."""
    return {
        "json_format": {
            "error": {
                "message": message,
                "type": kind,
                "param": None,
                "code": "%RESPONSE_CODE_DETAILS%",
            }
        }
    }


#: Envoy's own replies as OpenAI-style JSON, so SDKs show a readable error. Only the replies
#: Envoy makes itself: a body over `envoy.max_request_bytes` (413), no healthy or reachable
#: backend (503), an upstream timeout (504). Anything else (a backend's own error, the Lua
#: filter's fail-closed 503, which is JSON already) passes unchanged.
LOCAL_REPLIES: dict[str, Any] = {
    "mappers": [
        {
            "filter": {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": {"default_value": 413, "runtime_key": "cascade.local_reply.413"},
                    }
                }
            },
            "body_format_override": _openai_error(
                "The request body is larger than this gateway accepts.", "invalid_request_error"
            ),
        },
        {
            "filter": {"response_flag_filter": {"flags": ["UH", "UF", "NR"]}},
            "body_format_override": _openai_error(
                "No model backend is available right now; retry shortly.", "server_error"
            ),
        },
        {
            "filter": {"response_flag_filter": {"flags": ["UT"]}},
            "body_format_override": _openai_error(
                "The model backend did not answer in time.", "server_error"
            ),
        },
    ]
}


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
        "local_reply_config": LOCAL_REPLIES,
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
            *([body] if (body := body_filter(snapshot)) is not None else []),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
