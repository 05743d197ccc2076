"""Names and small builders shared by the parts of the rendered Envoy bootstrap."""

from __future__ import annotations

from typing import Any

from extproc.config.snapshot import Tier
from extproc.core.hostport import is_ip, parse_host_port

EXT_PROC_CLUSTER = "cascade_extproc"


#: The second classifier deployment (`envoy.ext_proc_canary.mode: route`).
EXT_PROC_CANARY = "cascade_extproc_canary"


EXT_PROC_FILTER = "envoy.filters.http.ext_proc"


TYPE = "type.googleapis.com/"


HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


EARLY_HEADER_MUTATION = (
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)


#: Rendered `false` in the bootstrap's static runtime layer. On (Envoy's default), ext_proc
#: side streams pass the gRPC connection's write-buffer watermarks to every filter chain with a
#: stream on it. A full write buffer on the shared HTTP/2 connection to the classifier (one 2 MB
#: body, or several smaller ones at once) then runs the high-watermark callbacks of the
#: upstream ext_proc of a fallback attempt that still waits for a backend connection, and
#: Envoy's `UpstreamCodecFilter::onAboveWriteBufferHighWatermark` dereferences the upstream
#: stream that does not exist yet: SIGSEGV (Envoy 1.39.3, 1.40.0). docs/envoy.md, "The 2 MB
#: fallback crash".
SIDE_STREAM_FLOW_CONTROL = "envoy.reloadable_features.grpc_side_stream_flow_control"


#: Headroom above `envoy.max_request_bytes` in the classifier connection's buffer limit (gRPC
#: framing, the headers of concurrent streams).
EXT_PROC_BUFFER_HEADROOM = 1 << 20


def tier_cluster(tier: Tier) -> str:
    return f"tier_{tier.name}"


def group_cluster(tier: Tier, group: str) -> str:
    return f"tier_{tier.name}_{group}"


def fallback_cluster(base: str) -> str:
    return f"{base}_fallback"


def socket_address(address: str) -> dict[str, Any]:
    host, port = parse_host_port(address, allow_zero=True)
    return {"socket_address": {"address": host, "port_value": port}}


def is_ip_address(address: str) -> bool:
    return is_ip(parse_host_port(address, allow_zero=True).host)


def duration(value: int) -> str:
    return f"{value / 1000:.3f}s"


def header_value(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
