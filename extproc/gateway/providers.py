"""URL backends (hosted APIs): one Envoy internal listener per backend that needs one.

A tier's route goes to its tier cluster (or a fallback aggregate whose members are tier
clusters). Upstream HTTP filters of a member cluster do not run behind an aggregate, and one
route serves every backend of its fallback chain, so nothing on the route or the outer cluster
can apply a per-backend Host, path or credential. Instead, a backend that needs any of them
(`Backend.needs_listener`: https, a base path, a credential) is an endpoint of its tier
cluster that points at an internal listener of its own (`envoy_internal_address`), and that
listener's connection manager applies them before its router sends the request to the real
provider (cluster `provider_<tier>_<n>`, TLS with SNI and certificate checks):

- `x-cascade-*` headers are removed (a provider learns nothing of the routing);
- the credential injector replaces the configured header with the secret's value
  (`static_resources.secrets`, read from a file or an environment variable by Envoy);
  the client's own credential headers (`CLIENT_CREDENTIAL_HEADERS`) are removed;
- `/v1/<rest>` becomes `<base path>/<rest>`, Host becomes the URL's authority;
- the router adds no `x-envoy-*` headers (`suppress_envoy_headers`), so the original path and
  host do not reach the provider either.

Retries, fallback, outlier detection and the per-attempt model rewrite stay on the outer
clusters, which see each listener as one host: a 429 or 5xx from a provider is retried on
another backend of the tier, then on the fallback tier, as between plain hosts.
"""

from __future__ import annotations

from typing import Any

from extproc.config.snapshot import Backend, Snapshot, Tier
from extproc.core import headers
from extproc.core.hostport import is_ip
from extproc.gateway.common import EARLY_HEADER_MUTATION, TYPE, duration

#: Removed from requests toward a backend with its own credential: whatever the client sent to
#: authenticate itself (to this gateway or to a provider) stays here.
CLIENT_CREDENTIAL_HEADERS = (
    "authorization",
    "x-api-key",
    "api-key",
    "proxy-authorization",
    "cookie",
)

INTERNAL_LISTENER = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
CREDENTIAL_INJECTOR = "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector"
GENERIC_CREDENTIAL = "envoy.extensions.http.injected_credentials.generic.v3.Generic"


def tier_uses_listeners(tier: Tier) -> bool:
    """Every backend of such a tier goes through a listener (one cluster cannot mix them with
    DNS-resolved hosts); a plain backend's listener only forwards."""
    return any(b.needs_listener for b in tier.backends)


def listener_name(tier: Tier, index: int) -> str:
    return f"backend_{tier.name}_{index}"


def provider_cluster(tier: Tier, index: int) -> str:
    return f"provider_{tier.name}_{index}"


def secret_name(tier: Tier, index: int) -> str:
    return f"credential_{tier.name}_{index}"


def backend_address(tier: Tier, backend: Backend) -> dict[str, Any]:
    """The outer endpoint's address of a backend of a tier that uses listeners."""
    index = tier.backends.index(backend)
    return {"envoy_internal_address": {"server_listener_name": listener_name(tier, index)}}


def _backends(snapshot: Snapshot) -> list[tuple[Tier, int, Backend]]:
    return [
        (tier, index, backend)
        for tier in snapshot.tiers
        if tier_uses_listeners(tier)
        for index, backend in enumerate(tier.backends)
    ]


def bootstrap_extensions(snapshot: Snapshot) -> list[dict[str, Any]]:
    if not _backends(snapshot):
        return []
    return [
        {
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": TYPE + INTERNAL_LISTENER},
        }
    ]


def secrets(snapshot: Snapshot) -> list[dict[str, Any]]:
    """One generic secret per credential: a file name or a variable name, never the value."""
    result = []
    for tier, index, backend in _backends(snapshot):
        credential = backend.credential
        if credential is None:
            continue
        source = (
            {"filename": credential.file}
            if credential.file
            else {"environment_variable": credential.env}
        )
        result.append({"name": secret_name(tier, index), "generic_secret": {"secret": source}})
    return result


def listeners(snapshot: Snapshot, local_replies: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": listener_name(tier, index),
            "internal_listener": {},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": _connection_manager(
                                snapshot, tier, index, backend, local_replies
                            ),
                        }
                    ]
                }
            ],
        }
        for tier, index, backend in _backends(snapshot)
    ]


def _connection_manager(
    snapshot: Snapshot, tier: Tier, index: int, backend: Backend, local_replies: dict[str, Any]
) -> dict[str, Any]:
    name = listener_name(tier, index)
    filters: list[dict[str, Any]] = []
    credential = backend.credential
    if credential is not None:
        filters.append(
            {
                "name": "envoy.filters.http.credential_injector",
                "typed_config": {
                    "@type": TYPE + CREDENTIAL_INJECTOR,
                    # The client's value of that header is replaced, never passed on; without
                    # the secret (unreadable file, unset variable) the request fails (401).
                    "overwrite": True,
                    "allow_request_without_credential": False,
                    "credential": {
                        "name": "envoy.http.injected_credentials.generic",
                        "typed_config": {
                            "@type": TYPE + GENERIC_CREDENTIAL,
                            "credential": {"name": secret_name(tier, index)},
                            "header": credential.header,
                        },
                    },
                },
            }
        )
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": TYPE + "envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": True,
            },
        }
    )
    return {
        "@type": TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
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
        "local_reply_config": local_replies,
        "route_config": {
            "name": name,
            "virtual_hosts": [
                {"name": name, "domains": ["*"], "routes": _routes(tier, index, backend)}
            ],
        },
        "http_filters": filters,
    }


def _routes(tier: Tier, index: int, backend: Backend) -> list[dict[str, Any]]:
    action: dict[str, Any] = {
        "cluster": provider_cluster(tier, index),
        # The outer route's timeouts (and per-try timeouts) end the stream; none here.
        "timeout": "0s",
    }
    if backend.host_header:
        action["host_rewrite_literal"] = backend.host_header
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": action}
    credential = backend.credential
    if credential is not None:
        # The injector overwrites its own header; the client's other credentials go too.
        route["request_headers_to_remove"] = [
            name for name in CLIENT_CREDENTIAL_HEADERS if name != credential.header
        ]
    if not backend.path:
        return [route]
    rewritten = {
        **route,
        "match": {"prefix": "/v1/"},
        "route": {**action, "prefix_rewrite": backend.path + "/"},
    }
    return [rewritten, route]


def clusters(snapshot: Snapshot) -> list[dict[str, Any]]:
    """The real providers behind the listeners."""
    result = []
    for tier, index, backend in _backends(snapshot):
        name = provider_cluster(tier, index)
        cluster: dict[str, Any] = {
            "name": name,
            "type": _cluster_type(backend),
            "connect_timeout": duration(snapshot.envoy.connect_timeout_ms),
            "dns_lookup_family": "V4_PREFERRED",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": backend.address,
                                            "port_value": backend.port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if backend.tls is not None:
            cluster["transport_socket"] = _tls_socket(snapshot, backend)
        result.append(cluster)
    return result


def _cluster_type(backend: Backend) -> str:
    """An IP: STATIC. A hosted API's name: LOGICAL_DNS (one connection target at a time, as
    for any large DNS pool). A plain backend beside it: STRICT_DNS, every address the name
    resolves to (a headless Service's pods), as it would be without the listener."""
    if is_ip(backend.address):
        return "STATIC"
    return "LOGICAL_DNS" if backend.needs_listener else "STRICT_DNS"


def _tls_socket(snapshot: Snapshot, backend: Backend) -> dict[str, Any]:
    tls = backend.tls
    assert tls is not None
    san_type = "IP_ADDRESS" if is_ip(tls.sni) else "DNS"
    common: dict[str, Any] = {
        "validation_context": {
            "trusted_ca": {"filename": tls.ca_file or snapshot.envoy.ca_bundle},
            # Envoy checks the chain only unless told which name the certificate must carry.
            "match_typed_subject_alt_names": [
                {"san_type": san_type, "matcher": {"exact": tls.sni}}
            ],
        }
    }
    if tls.cert_file:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": tls.cert_file},
                "private_key": {"filename": tls.key_file},
            }
        ]
    context: dict[str, Any] = {"@type": TYPE + TLS_CONTEXT, "common_tls_context": common}
    if not is_ip(tls.sni):
        context["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}
