"""What `cascade render envoy` builds from the resilience settings (no Envoy binary needed;
tests/e2e/test_rendered_config.py runs `envoy --mode validate` on the shipped variants)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from extproc.config.snapshot import compile_config
from extproc.gateway.common import SIDE_STREAM_FLOW_CONTROL
from extproc.gateway.lua import lua_string
from extproc.gateway.render import bootstrap, render_yaml, typed_bootstrap

BASE = """
tiers:
  - name: weak
    model: small
    backends: [{address: "10.0.0.1:8000"}]
  - name: strong
    model: big
    fallback: weak
    backends: [{address: "10.0.0.2:8000"}]
classifier: v1
classifiers: {v1: {default: weak}}
"""


def render(text: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(routes by name, clusters by name) of the bootstrap for a config."""
    snapshot = compile_config(text)
    typed_bootstrap(snapshot)  # every variant parses as the typed Bootstrap
    data = bootstrap(snapshot)
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vhost = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
    routes = {r["name"]: r for r in vhost["routes"]}
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    return routes, clusters


def upstream_filter(cluster: dict[str, Any]) -> dict[str, Any] | None:
    options = cluster.get("typed_extension_protocol_options")
    if not options:
        return None
    (protocol,) = options.values()
    filters = protocol.get("http_filters", [])
    return filters[0]["typed_config"] if filters else None


def test_fallback_aggregate_and_retry_priority() -> None:
    routes, clusters = render(BASE)
    assert routes["tier_strong"]["route"]["cluster"] == "tier_strong_fallback"
    assert routes["tier_weak"]["route"]["cluster"] == "tier_weak"
    members = clusters["tier_strong_fallback"]["cluster_type"]["typed_config"]["clusters"]
    assert members == ["tier_strong", "tier_weak"]
    priority = routes["tier_strong"]["route"]["retry_policy"]["retry_priority"]
    assert priority["typed_config"]["update_frequency"] == 1

    # without rewrite_model the upstream filter only counts: headers, no body
    _, clusters = render(BASE + "server: {rewrite_model: false}\n")
    upstream = upstream_filter(clusters["tier_strong_fallback"])
    assert upstream is not None
    assert upstream["processing_mode"]["request_body_mode"] == "NONE"
    assert upstream_filter(clusters["tier_strong"]) is None


def test_rewrite_model_buffers_the_body_upstream() -> None:
    _, clusters = render(BASE + "server: {rewrite_model: true}\n")
    upstream = upstream_filter(clusters["tier_strong_fallback"])
    assert upstream is not None
    assert upstream["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert upstream["failure_mode_allow"] is True


def test_no_fallback_no_aggregate() -> None:
    routes, clusters = render(BASE.replace("    fallback: weak\n", ""))
    assert routes["tier_strong"]["route"]["cluster"] == "tier_strong"
    assert "retry_priority" not in routes["tier_strong"]["route"]["retry_policy"]
    assert not any(name.endswith("_fallback") for name in clusters)


def test_retry_policy_follows_the_settings() -> None:
    text = BASE + (
        "envoy:\n  retries: {num_retries: 4, status_codes: [503], retry_after_max_ms: 0,"
        " per_try_timeout_s: 200, attempts_per_tier: 2, budget_percent: 35,"
        " min_retry_concurrency: 7}\n"
    )
    routes, clusters = render(text)
    policy = routes["tier_strong"]["route"]["retry_policy"]
    assert policy["num_retries"] == 4
    assert policy["retriable_status_codes"] == [503]
    assert "rate_limited_retry_back_off" not in policy
    assert policy["per_try_timeout"] == "200s"
    assert policy["retry_priority"]["typed_config"]["update_frequency"] == 2
    budget = {"budget_percent": {"value": 35.0}, "min_retry_concurrency": 7}
    for name in ("tier_weak", "tier_strong", "tier_strong_fallback"):
        thresholds = clusters[name]["circuit_breakers"]["thresholds"]
        assert [t["priority"] for t in thresholds] == ["DEFAULT", "HIGH"]
        # the budget replaces the fixed breaker (Envoy ignores max_retries beside it)
        assert all(t == {"priority": t["priority"], "retry_budget": budget} for t in thresholds)


def test_outlier_detection_can_be_switched_off() -> None:
    _, clusters = render(BASE)
    assert clusters["tier_strong"]["outlier_detection"]["consecutive_5xx"] == 3
    _, clusters = render(BASE + "envoy: {outlier_detection: {enabled: false}}\n")
    assert "outlier_detection" not in clusters["tier_strong"]


def test_backend_canary_mirror_and_rewrite() -> None:
    text = BASE.replace(
        '    backends: [{address: "10.0.0.1:8000"}]\n',
        """    mirror: {tier: strong, percent: 0.5}
    backends:
      - {address: "10.0.0.1:8000", name: stable, weight: 95}
      - {address: "10.0.0.3:8000", name: canary, model: small-v2, weight: 5}
""",
        1,
    )
    routes, clusters = render(text + "server: {rewrite_model: true}\n")
    weak = routes["tier_weak"]["route"]
    assert weak["weighted_clusters"] == {
        "clusters": [
            {"name": "tier_weak_stable", "weight": 95},
            {"name": "tier_weak_canary", "weight": 5},
        ],
        "use_hash_policy": True,
    }
    assert weak["hash_policy"] == [{"header": {"header_name": "x-user-id"}}]
    (mirror,) = weak["request_mirror_policies"]
    assert mirror["cluster"] == "tier_strong"
    assert mirror["runtime_fraction"]["default_value"] == {
        "numerator": 5000,
        "denominator": "MILLION",
    }
    tag = mirror["request_headers_mutations"][0]["append"]["header"]
    assert tag == {"key": "x-cascade-shadow-of", "value": "weak"}
    # the fallback goes to every weak backend; the mirror target and the canary group
    # rewrite the model per attempt, the stable group does not need to
    assert clusters["tier_strong_fallback"]["cluster_type"]["typed_config"]["clusters"] == [
        "tier_strong",
        "tier_weak",
    ]
    assert upstream_filter(clusters["tier_strong"]) is not None
    assert upstream_filter(clusters["tier_weak_canary"]) is not None
    assert upstream_filter(clusters["tier_weak_stable"]) is None
    # the tier-less default route never mirrors
    assert "request_mirror_policies" not in routes["default_tier"]["route"]


def test_backend_canary_without_stickiness() -> None:
    text = BASE.replace(
        '    backends: [{address: "10.0.0.1:8000"}]\n',
        """    sticky_header: ""
    backends:
      - {address: "10.0.0.1:8000", name: a}
      - {address: "10.0.0.3:8000", name: b}
""",
        1,
    )
    routes, _ = render(text)
    assert "hash_policy" not in routes["tier_weak"]["route"]
    assert "use_hash_policy" not in routes["tier_weak"]["route"]["weighted_clusters"]


def test_backend_canary_in_a_tier_with_fallback_wraps_each_group() -> None:
    text = BASE.replace(
        '    backends: [{address: "10.0.0.2:8000"}]\n',
        """    backends:
      - {address: "10.0.0.2:8000", name: a, weight: 70}
      - {address: "10.0.0.4:8000", name: b, weight: 30}
""",
    )
    routes, clusters = render(text)
    split = routes["tier_strong"]["route"]["weighted_clusters"]["clusters"]
    assert split == [
        {"name": "tier_strong_a_fallback", "weight": 70},
        {"name": "tier_strong_b_fallback", "weight": 30},
    ]
    members = clusters["tier_strong_b_fallback"]["cluster_type"]["typed_config"]["clusters"]
    assert members == ["tier_strong_b", "tier_weak"]


def test_default_route_uses_default_tier() -> None:
    routes, _ = render(BASE + "default_tier: strong\n")
    assert routes["default_tier"]["route"]["cluster"] == "tier_strong_fallback"


def test_classifier_deployments_by_route() -> None:
    text = BASE + (
        "envoy: {ext_proc: ['127.0.0.1:50051'],"
        " ext_proc_canary: {addresses: ['127.0.0.1:50061'], percent: 12.5}}\n"
    )
    routes, clusters = render(text)
    assert list(routes)[-3:] == ["classifier_canary_pinned", "classifier_canary", "default_tier"]
    fraction = routes["classifier_canary"]["match"]["runtime_fraction"]
    assert fraction["default_value"]["numerator"] == 125_000
    assert fraction["runtime_key"] == "cascade.classifier_canary_percent"
    override = routes["classifier_canary"]["typed_per_filter_config"][
        "envoy.filters.http.ext_proc"
    ]["overrides"]
    assert override["grpc_service"]["envoy_grpc"]["cluster_name"] == "cascade_extproc_canary"
    pinned = routes["classifier_canary_pinned"]["match"]["headers"][0]
    assert pinned == {"name": "x-classifier-canary", "present_match": True}
    assert "cascade_extproc_canary" in clusters
    assert clusters["cascade_extproc_canary"]["health_checks"]


def test_classifier_deployments_by_endpoint_weight() -> None:
    text = BASE + (
        "envoy: {ext_proc: ['127.0.0.1:50051', '127.0.0.1:50052'],"
        " ext_proc_canary: {addresses: ['127.0.0.1:50061'], percent: 10, mode: endpoints}}\n"
    )
    routes, clusters = render(text)
    assert "classifier_canary" not in routes
    endpoints = clusters["cascade_extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    weights = {
        e["endpoint"]["address"]["socket_address"]["port_value"]: e["load_balancing_weight"]
        for e in endpoints
    }
    # two stable endpoints and one canary: the canary gets exactly 10 % of the picks
    assert weights[50061] / sum(weights.values()) == 0.10
    assert weights[50051] == weights[50052]


def test_endpoint_weight_extremes_drop_the_idle_side() -> None:
    text = (
        BASE
        + "envoy: {ext_proc_canary: {addresses: ['127.0.0.1:50061'], percent: %s, mode: endpoints}}\n"
    )
    for percent, port in ((0, 50051), (100, 50061)):
        _, clusters = render(text % percent)
        endpoints = clusters["cascade_extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [
            port
        ]


def test_served_tier_headers_come_from_host_metadata() -> None:
    snapshot = compile_config(BASE)
    text = render_yaml(snapshot)
    assert "%UPSTREAM_METADATA(cascade:tier)%" in text
    assert "always_set_request_id_in_response: true" in text
    assert "admin_layer" in text


def test_ext_proc_cluster_resolves_names_and_keeps_ips_static() -> None:
    _, clusters = render(BASE)
    assert clusters["cascade_extproc"]["type"] == "STATIC"
    text = BASE + "envoy: {ext_proc: ['cascade-classifier.cascade.svc:50051']}\n"
    _, clusters = render(text)
    assert clusters["cascade_extproc"]["type"] == "STRICT_DNS"


def test_ipv6_backend_renders_as_a_bare_address_envoy_accepts() -> None:
    text = BASE.replace('"10.0.0.1:8000"', '"[::1]:18081"')
    _, clusters = render(text)
    endpoint = clusters["tier_weak"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    socket = endpoint["endpoint"]["address"]["socket_address"]
    assert socket == {"address": "::1", "port_value": 18081}


def test_side_stream_flow_control_off_and_classifier_buffer_above_the_body_limit() -> None:
    """The 2 MB fallback crash (docs/envoy.md): the runtime guard is off in the static layer and
    the classifier clusters (only they) fit the largest allowed body under their watermark."""
    text = BASE + (
        'envoy:\n  max_request_bytes: 4194304\n  ext_proc_canary: {addresses: ["10.0.0.9:50051"],'
        " percent: 10}\n"
    )
    snapshot = compile_config(text)
    data = bootstrap(snapshot)
    static, admin = data["layered_runtime"]["layers"]
    assert static["static_layer"] == {SIDE_STREAM_FLOW_CONTROL: False}
    assert "admin_layer" in admin
    limits = {
        c["name"]: c.get("per_connection_buffer_limit_bytes")
        for c in data["static_resources"]["clusters"]
    }
    assert limits.pop("cascade_extproc") == 4194304 + 1024 * 1024
    assert limits.pop("cascade_extproc_canary") == 4194304 + 1024 * 1024
    assert set(limits.values()) == {None}  # tier and fallback clusters keep Envoy's 1 MiB
    # and it survives the typed round trip into the YAML Envoy reads
    rendered = yaml.safe_load(render_yaml(snapshot))
    assert rendered["layered_runtime"]["layers"][0]["static_layer"] == {
        SIDE_STREAM_FLOW_CONTROL: False
    }
    (ext_proc, *_) = rendered["static_resources"]["clusters"]
    assert int(ext_proc["per_connection_buffer_limit_bytes"]) == 4194304 + 1024 * 1024


def http_filters(text: str) -> list[dict[str, Any]]:
    data = bootstrap(compile_config(text))
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters: list[dict[str, Any]] = hcm["typed_config"]["http_filters"]
    return filters


def lua_source(text: str) -> str | None:
    for item in http_filters(text):
        if item["name"] == "envoy.filters.http.lua":
            source: str = item["typed_config"]["default_source_code"]["inline_string"]
            return source
    return None


def test_body_filter_sits_between_ext_proc_and_the_router() -> None:
    names = [f["name"] for f in http_filters(BASE)]
    assert names == [
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.lua",
        "envoy.filters.http.router",
    ]


@pytest.mark.parametrize(
    ("settings", "mode", "stream"),
    [
        ("server: {rewrite_model: false}\n", "pass", "10000"),  # auto without rewrite_model
        ("", "rewrite", "10000"),  # auto with the default rewrite_model: true
        ("envoy: {unclassified: reject}\n", "reject", "10000"),
        (
            "envoy: {unclassified: rewrite, retries: {stream_per_try_timeout_ms: 2500}}\n",
            "rewrite",
            "2500",
        ),
        (
            "envoy: {unclassified: rewrite, retries: {stream_per_try_timeout_ms: 0}}\n",
            "rewrite",
            "",
        ),
    ],
)
def test_body_filter_settings(settings: str, mode: str, stream: str) -> None:
    source = lua_source(BASE + settings)
    assert source is not None
    assert f"local MODE = [==[{mode}]==]" in source
    assert f"local STREAM_TIMEOUT_MS = [==[{stream}]==]" in source
    assert 'local MODEL = [==["small"]==]' in source  # the default tier's model, as JSON
    assert "x-envoy-upstream-rq-per-try-timeout-ms" in source


def test_no_body_filter_when_it_has_nothing_to_do() -> None:
    text = BASE + "envoy: {unclassified: pass, retries: {stream_per_try_timeout_ms: 0}}\n"
    assert lua_source(text) is None
    assert [f["name"] for f in http_filters(text)][-1] == "envoy.filters.http.router"


def test_lua_strings_survive_any_model_name() -> None:
    assert lua_string("qwen3-4b") == "[==[qwen3-4b]==]"
    assert lua_string('say "]==]"') == '"say \\034]==]\\034"'
    assert lua_string("a\nb\u00e9") == '"a\\010b\\195\\169"'
