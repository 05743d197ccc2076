"""The two ext_proc filters: the classifier on the listener and the per-attempt (upstream) role."""

from __future__ import annotations

from typing import Any

from extproc.config.drift import routes_fingerprint
from extproc.config.snapshot import Snapshot
from extproc.core import headers
from extproc.gateway import lua
from extproc.gateway.common import (
    EXT_PROC_CLUSTER,
    HTTP_PROTOCOL_OPTIONS,
    TYPE,
    duration,
)
from extproc.routing.attributes import RESPONSE_ATTRIBUTES

LUA = "envoy.extensions.filters.http.lua.v3.Lua"


def grpc_service(
    message_timeout_ms: int, metadata: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The gRPC service of both ext_proc filters (classifier and per-attempt upstream)."""
    service: dict[str, Any] = {
        "envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER},
        "timeout": duration(message_timeout_ms * 2),
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
            # the tiers these routes know: the server decides with a config that has them
            "grpc_service": grpc_service(
                settings.message_timeout_ms,
                [{"key": headers.ROUTES_METADATA, "value": routes_fingerprint(snapshot)}],
            ),
            "failure_mode_allow": True,
            "message_timeout": duration(settings.message_timeout_ms),
            "forward_rules": forwarded_headers(snapshot),
            **response_processing(snapshot),
            "route_cache_action": "DEFAULT",
            "mutation_rules": {
                "disallow_all": True,
                "allow_expression": {
                    # `age` and `cache-control`: a response-cache hit answered by the server
                    "regex": "^(x-cascade-.*|content-length|content-type|traceparent|tracestate"
                    "|age|cache-control)$"
                },
            },
            "stat_prefix": "cascade",
        },
    }


def forwarded_headers(snapshot: Snapshot, *extra: str) -> dict[str, Any]:
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
        *extra,
    ]
    if snapshot.canary is not None:
        names.append(snapshot.canary.key_header)
    if snapshot.cache.enabled:  # the tenant identity (only an HMAC of it is kept), Cache-Control
        names.extend(snapshot.cache.headers)
    if snapshot.capture.segment_header:
        names.append(snapshot.capture.segment_header)
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
    response headers need no round trip of their own (SKIP). Off: request phases only. The
    response cache needs the same to store answers.
    """
    observe = snapshot.telemetry.response_processing or snapshot.cache.enabled
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


def body_filter(snapshot: Snapshot) -> dict[str, Any] | None:
    """The Lua filter after ext_proc (extproc/gateway/lua.py): the default tier's model on
    requests the classifier did not decide (`envoy.unclassified`), and the time-to-first-token
    per-try timeout on streamed requests. None when neither is configured."""
    source = lua.script(snapshot)
    if source is None:
        return None
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": TYPE + LUA,
            "default_source_code": {"inline_string": source},
            "stat_prefix": "cascade_body",
        },
    }


def upstream_ext_proc_filter(
    snapshot: Snapshot, *, rewrite: bool, gate: bool = False, hold_ms: int | None = None
) -> dict[str, Any]:
    """The per-attempt (upstream) ext_proc: runs after the load balancer picked a host.

    The same server answers it in its upstream role (gRPC metadata `x-cascade-role: upstream`):
    it reads the host's metadata (`cascade.tier`, `cascade.model`), counts a fallback when the
    host's tier is not the decided one, and with `rewrite` sets the body's `model` to the
    host's model (a retry moved from strong to weak must not ask weak for the strong model).
    With `gate` (a gated tier's aggregate) it reads every request body (the gate's request
    facts) and may ask, per attempt, for the response (`allow_mode_override`); with `hold_ms`
    (the gate holds streams too) it sees every response instead, and the server may hold the
    response headers while the first chunks arrive (`gate_stream_modes`).
    """
    settings = snapshot.envoy
    modes: dict[str, Any] = {"allow_mode_override": True} if gate else {}
    if hold_ms is not None:
        modes = gate_stream_modes(settings.message_timeout_ms, hold_ms)
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": grpc_service(
                settings.message_timeout_ms,
                [{"key": headers.ROLE_METADATA, "value": headers.ROLE_UPSTREAM}],
            ),
            # Unreachable server: the attempt goes out unchanged rather than failing.
            "failure_mode_allow": True,
            "message_timeout": duration(settings.message_timeout_ms),
            # As on the listener: no credentials to the classifier. Its upstream role also
            # reads content-length (a rewrite of an earlier attempt changed it) and, where it
            # looks at answers, the response's :status (the rules apply to both directions).
            "forward_rules": forwarded_headers(snapshot, headers.CONTENT_LENGTH, headers.STATUS),
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED" if rewrite or gate else "NONE",
                "response_header_mode": "SEND" if hold_ms is not None else "SKIP",
                "response_body_mode": "STREAMED" if hold_ms is not None else "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "request_attributes": ["xds.upstream_host_metadata", "upstream.address"],
            **modes,
            "mutation_rules": {
                "disallow_all": True,
                "allow_expression": {"regex": "^(x-cascade-.*|content-length)$"},
            },
            "stat_prefix": "cascade_upstream",
            # pair capture reads a shadow copy's answer (extproc/routing/capture_upstream.py)
            **({"allow_mode_override": True} if snapshot.capture.enabled else {}),
        },
    }


def gate_stream_modes(message_timeout_ms: int, hold_ms: int) -> dict[str, Any]:
    """Body chunks go to the server while it holds the response headers; it may extend the
    held message's timeout up to the hold (a stall beyond it fails open: released unjudged)."""
    return {
        "send_body_without_waiting_for_header_response": True,
        "max_message_timeout": duration(max(message_timeout_ms, hold_ms) + 1000),
    }


def upstream_filters(
    snapshot: Snapshot, *, rewrite: bool, gate: bool = False, hold_ms: int | None = None
) -> dict[str, Any]:
    return {
        HTTP_PROTOCOL_OPTIONS: {
            "@type": TYPE + HTTP_PROTOCOL_OPTIONS,
            "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [
                upstream_ext_proc_filter(snapshot, rewrite=rewrite, gate=gate, hold_ms=hold_ms),
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
