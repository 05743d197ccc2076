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
from envoy.extensions.bootstrap.internal_listener.v3 import (  # noqa: F401
    internal_listener_pb2,
)
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2  # noqa: F401
from envoy.extensions.filters.http.credential_injector.v3 import (  # noqa: F401
    credential_injector_pb2,
)
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (  # noqa: F401
    header_mutation_pb2,
)
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.retry.priority.previous_priorities.v3 import (  # noqa: F401
    previous_priorities_config_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from extproc.config.snapshot import Snapshot
from extproc.gateway import providers
from extproc.gateway.clusters import ext_proc_clusters, fallback_clusters, tier_clusters
from extproc.gateway.common import SIDE_STREAM_FLOW_CONTROL, socket_address
from extproc.gateway.routes import LOCAL_REPLIES, connection_manager


def bootstrap(snapshot: Snapshot) -> dict[str, Any]:
    """The whole Envoy bootstrap as plain data."""
    document: dict[str, Any] = {
        "admin": {"address": socket_address(snapshot.envoy.admin)},
        # The static layer turns ext_proc side-stream flow control off: with it on, a full
        # write buffer to the classifier crashes Envoy 1.39/1.40 when an upstream ext_proc
        # (fallback attempt) waits for a backend connection (SIDE_STREAM_FLOW_CONTROL). The
        # admin layer lets `POST /runtime_modify` change runtime keys live (the classifier
        # canary's route fraction); nothing must use it to turn that guard back on.
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {SIDE_STREAM_FLOW_CONTROL: False}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "cascade_http",
                    "address": socket_address(snapshot.envoy.listen),
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
                },
                *providers.listeners(snapshot, LOCAL_REPLIES),
            ],
            "clusters": [
                *ext_proc_clusters(snapshot),
                *tier_clusters(snapshot),
                *fallback_clusters(snapshot),
                *providers.clusters(snapshot),
            ],
        },
    }
    # URL backends (hosted APIs): internal listeners and the credentials' secret references
    if extensions := providers.bootstrap_extensions(snapshot):
        document["bootstrap_extensions"] = extensions
    if secrets := providers.secrets(snapshot):
        document["static_resources"]["secrets"] = secrets
    return document


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
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the Lua source) as literal blocks, readable in the rendered file."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


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
