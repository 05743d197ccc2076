"""URL backends: what the config accepts and refuses, and what the renderer builds from them
(tests/e2e/test_url_backends.py sends real requests through Envoy to TLS mock providers)."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.config.snapshot import compile_config
from extproc.config.tiers import Backend
from extproc.core.errors import ConfigError
from extproc.gateway.render import bootstrap, typed_bootstrap

CONFIG = """
tiers:
  - name: weak
    model: small
    backends: [{{address: "10.0.0.1:8000"}}]
  - name: strong
    model: big
    fallback: weak
    backends: {backends}
classifier: v1
classifiers: {{v1: {{default: weak}}}}
"""


def backends(text: str) -> tuple[Backend, ...]:
    return compile_config(CONFIG.format(backends=text)).tier("strong").backends


def only(text: str) -> Backend:
    (backend,) = backends(text)
    return backend


def test_host_port_and_a_plain_http_url_are_the_same_backend() -> None:
    plain = only('[{address: "10.0.0.5:8000"}]')
    url = only('[{address: "http://10.0.0.5:8000"}]')
    assert plain == url
    assert (url.address, url.port, url.needs_listener) == ("10.0.0.5", 8000, False)
    assert only('[{address: "http://10.0.0.5:8000/"}]') == plain  # "/" = paths unchanged


def test_an_https_url_means_tls_sni_host_and_base_path() -> None:
    backend = only('[{address: "https://api.provider.example/v1"}]')
    assert (backend.address, backend.port) == ("api.provider.example", 443)
    assert backend.tls is not None and backend.tls.sni == "api.provider.example"
    assert backend.tls.ca_file == ""  # envoy.ca_bundle
    assert backend.host_header == "api.provider.example"
    assert backend.path == "/v1"
    assert backend.needs_listener
    groq = only('[{address: "https://api.groq.com:8443/openai/v1/"}]')
    assert (groq.port, groq.path, groq.host_header) == (8443, "/openai/v1", "api.groq.com:8443")
    v6 = only('[{address: "https://[::1]:8443/v1"}]')
    assert (v6.address, v6.host_header) == ("::1", "[::1]:8443")


def test_credentials_name_a_file_or_a_variable() -> None:
    backend = only(
        '[{address: "https://a.example/v1", credential: {env: A_KEY, header: X-Api-Key}}]'
    )
    assert backend.credential is not None
    assert (backend.credential.env, backend.credential.header) == ("A_KEY", "x-api-key")
    backend = only('[{address: "http://10.0.0.5:8000", credential: {file: /run/key}}]')
    assert backend.credential is not None and backend.credential.file == "/run/key"
    assert backend.needs_listener and backend.host_header == "10.0.0.5:8000"


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ('[{address: "ftp://a.example/v1"}]', "address", "http:// or https://"),
        ('[{address: "https://user:pw@a.example/v1"}]', "address", "no credentials in the URL"),
        ('[{address: "https://a.example/v1?key=1"}]', "address", "no query"),
        ('[{address: "https://:443/v1"}]', "address", "no host"),
        ('[{address: "https://a.example:0/v1"}]', "address", "port 0"),
        ('[{address: "https://a.example:99999/v1"}]', "address", "not a valid URL"),
        ('[{address: "10.0.0.5:8000", tls: {}}]', "tls", "https://"),
        ('[{address: "http://10.0.0.5:8000", tls: {}}]', "tls", "https://"),
        (
            '[{address: "https://a.example", tls: {cert_file: /c.pem}}]',
            "tls",
            "cert_file and key_file",
        ),
        (
            '[{address: "https://a.example", credential: {file: /k, env: K}}]',
            "credential",
            "exactly one",
        ),
        ('[{address: "https://a.example", credential: {}}]', "credential", "exactly one"),
        (
            '[{address: "https://a.example", credential: {env: "A-B"}}]',
            "credential.env",
            "variable name",
        ),
        (
            '[{address: "https://a.example", credential: {env: K, header: "x cascade"}}]',
            "credential.header",
            "header name",
        ),
        (
            '[{address: "https://a.example", credential: {env: K, header: x-cascade-tier}}]',
            "credential.header",
            "cannot carry",
        ),
        ('[{address: "https://a.example", token: x}]', "token", "unknown key"),
    ],
)
def test_bad_url_backends_are_refused_with_their_path(text: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        backends(text)
    assert f"tiers[1].backends[0].{path}" in str(caught.value)
    assert message in str(caught.value)


def test_tier_timeouts() -> None:
    text = CONFIG.format(backends='[{address: "10.0.0.2:8000"}]').replace(
        "    fallback: weak\n", "    fallback: weak\n    timeout_s: 90\n    per_try_timeout_s: 30\n"
    )
    routes = _routes(bootstrap(compile_config(text)))
    assert routes["tier_strong"]["route"]["timeout"] == "90s"
    assert routes["tier_strong"]["route"]["retry_policy"]["per_try_timeout"] == "30s"
    assert routes["tier_weak"]["route"]["timeout"] == "300s"  # envoy.route_timeout_s
    with pytest.raises(ConfigError, match="longer than the tier's timeout_s"):
        compile_config(text.replace("per_try_timeout_s: 30", "per_try_timeout_s: 91"))


def _routes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return {r["name"]: r for r in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]}


HOSTED = """[
  {address: "https://api.one.example/openai/v1", credential: {env: ONE_KEY}, weight: 70},
  {address: "https://api.two.example/v1", model: two-big, weight: 30,
   credential: {file: /run/secrets/two, header: x-api-key},
   tls: {ca_file: /etc/two-ca.pem, cert_file: /etc/c.pem, key_file: /etc/c.key}},
  {address: "10.0.0.9:8000"},
  {address: "llm-weak.models.svc:8000"},
]"""


def _rendered() -> dict[str, Any]:
    snapshot = compile_config(CONFIG.format(backends=HOSTED))
    typed_bootstrap(snapshot)  # parses as the typed Bootstrap (unknown fields fail)
    return bootstrap(snapshot)


def test_url_backends_render_as_internal_listeners_of_the_tier_cluster() -> None:
    data = _rendered()
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    tier = clusters["tier_strong"]
    assert tier["type"] == "STATIC"
    endpoints = tier["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["envoy_internal_address"] for e in endpoints] == [
        {"server_listener_name": f"backend_strong_{i}"} for i in range(4)
    ]
    assert [e["load_balancing_weight"] for e in endpoints] == [70, 30, 100, 100]
    models = [e["metadata"]["filter_metadata"]["cascade"]["model"] for e in endpoints]
    assert models == ["big", "two-big", "big", "big"]
    assert clusters["tier_weak"]["type"] == "STRICT_DNS"  # plain tiers as before
    assert data["bootstrap_extensions"][0]["name"] == "envoy.bootstrap.internal_listener"
    one = clusters["provider_strong_0"]
    assert one["type"] == "LOGICAL_DNS"
    tls = one["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.one.example"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.one.example"}}
    ]
    two = clusters["provider_strong_1"]["transport_socket"]["typed_config"]
    assert two["common_tls_context"]["validation_context"]["trusted_ca"] == {
        "filename": "/etc/two-ca.pem"
    }
    assert two["common_tls_context"]["tls_certificates"][0]["certificate_chain"] == {
        "filename": "/etc/c.pem"
    }
    plain = clusters["provider_strong_2"]
    assert plain["type"] == "STATIC" and "transport_socket" not in plain
    assert clusters["provider_strong_3"]["type"] == "STRICT_DNS"  # a Service name, as before


def _listener(data: dict[str, Any], name: str) -> dict[str, Any]:
    (listener,) = [x for x in data["static_resources"]["listeners"] if x["name"] == name]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_each_listener_rewrites_path_and_host_and_injects_its_credential() -> None:
    data = _rendered()
    one = _listener(data, "backend_strong_0")
    routes = one["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"] == {"prefix": "/v1/"}
    assert routes[0]["route"]["prefix_rewrite"] == "/openai/v1/"
    assert routes[0]["route"]["host_rewrite_literal"] == "api.one.example"
    assert routes[1]["match"] == {"prefix": "/"} and "prefix_rewrite" not in routes[1]["route"]
    injector = one["http_filters"][0]["typed_config"]
    assert injector["overwrite"] is True and injector["allow_request_without_credential"] is False
    assert injector["credential"]["typed_config"]["header"] == "authorization"
    removed = routes[0]["request_headers_to_remove"]  # the injector overwrites its own
    assert "authorization" not in removed and {"x-api-key", "cookie"} <= set(removed)
    assert one["http_filters"][-1]["typed_config"]["suppress_envoy_headers"] is True
    two = _listener(data, "backend_strong_1")
    routes = two["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["route"]["prefix_rewrite"] == "/v1/"
    removed = routes[0]["request_headers_to_remove"]  # its key goes in x-api-key
    assert "authorization" in removed and "x-api-key" not in removed
    plain = _listener(data, "backend_strong_2")
    assert [f["name"] for f in plain["http_filters"]] == ["envoy.filters.http.router"]
    assert (
        "host_rewrite_literal"
        not in plain["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    )


def test_secrets_name_where_the_credential_is_never_its_value() -> None:
    secrets = _rendered()["static_resources"]["secrets"]
    assert secrets == [
        {"name": "credential_strong_0", "generic_secret": {"secret": {"environment_variable": "ONE_KEY"}}},
        {"name": "credential_strong_1", "generic_secret": {"secret": {"filename": "/run/secrets/two"}}},
    ]  # fmt: skip


def test_configs_without_url_backends_render_as_before() -> None:
    data = bootstrap(compile_config(CONFIG.format(backends='[{address: "10.0.0.2:8000"}]')))
    assert "bootstrap_extensions" not in data
    assert "secrets" not in data["static_resources"]
    assert len(data["static_resources"]["listeners"]) == 1


def test_no_ext_proc_filter_sends_the_classifier_credentials() -> None:
    """The listener's filter and the per-attempt (upstream) one both forward an allow-list:
    neither `authorization` nor a provider key header reaches the classifier."""
    data = _rendered()
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    listener_rules = hcm["typed_config"]["http_filters"][0]["typed_config"]["forward_rules"]
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    (options,) = clusters["tier_strong_fallback"]["typed_extension_protocol_options"].values()
    upstream = options["http_filters"][0]["typed_config"]
    upstream_rules = upstream["forward_rules"]
    for rules in (listener_rules, upstream_rules):
        exact = {p["exact"] for p in rules["allowed_headers"]["patterns"] if "exact" in p}
        assert "authorization" not in exact and "x-api-key" not in exact
        assert {":path", "x-request-id"} <= exact
    upstream_exact = {p.get("exact") for p in upstream_rules["allowed_headers"]["patterns"]}
    assert {"content-length", ":status"} <= upstream_exact


def test_a_backend_canary_group_of_url_backends_shares_their_listeners() -> None:
    text = CONFIG.format(
        backends="""[
          {address: "https://a.example/v1", name: stable, weight: 90},
          {address: "https://b.example/v1", name: canary, weight: 10, model: big-next},
        ]"""
    )
    snapshot = compile_config(text)
    typed_bootstrap(snapshot)
    clusters = {c["name"]: c for c in bootstrap(snapshot)["static_resources"]["clusters"]}

    def listeners(name: str) -> list[str]:
        endpoints = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        return [
            e["endpoint"]["address"]["envoy_internal_address"]["server_listener_name"]
            for e in endpoints
        ]

    assert listeners("tier_strong") == ["backend_strong_0", "backend_strong_1"]
    assert listeners("tier_strong_stable") == ["backend_strong_0"]
    assert listeners("tier_strong_canary") == ["backend_strong_1"]
    assert clusters["tier_strong_canary"]["type"] == "STATIC"
