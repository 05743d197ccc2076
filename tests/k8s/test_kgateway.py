"""kgateway overlays: references between objects resolve, the CEL rules a cluster would enforce
hold, and the gateway settings match what `cascade render envoy` gives plain Envoy for the same
cascade config."""

from __future__ import annotations

import re
from typing import Any

import pytest

from extproc.config.snapshot import Snapshot, compile_config
from extproc.core import headers
from extproc.gateway.render import bootstrap
from tests.k8s.conftest import KGATEWAY_OVERLAYS, container, find, one
from tests.k8s.kustomize import Obj

KGATEWAY = "gateway.kgateway.dev"
GATEWAY_API = "gateway.networking.k8s.io"


def snapshot_of(objects: list[Obj]) -> Snapshot:
    config_map = one(objects, "ConfigMap", "cascade-config")
    return compile_config(config_map["data"]["cascade.yaml"], "cascade-config")


def service_port(objects: list[Obj], name: str, port: int) -> dict[str, Any]:
    service = one(objects, "Service", name)
    matches = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert matches, f"Service {name} has no port {port}"
    return matches[0]


def duration_s(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9]+)(ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


@pytest.fixture(params=KGATEWAY_OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered[request.param]


@pytest.fixture
def model_services(rendered: dict[str, list[Obj]]) -> list[Obj]:
    """Services the overlays route to: the platform's own, stood in for by the mock backends."""
    return find(rendered["mock-backends"], "Service")


# -- references -----------------------------------------------------------------------------------


def test_gateway_extension_reaches_the_classifier_over_http2(overlay: list[Obj]) -> None:
    extension = one(overlay, "GatewayExtension")
    ref = extension["spec"]["extProc"]["grpcService"]["backendRef"]
    assert ref.get("kind", "Service") == "Service"
    # CEL "Must have port for Service reference" (jsonschema does not evaluate it).
    assert "port" in ref
    port = service_port(overlay, ref["name"], ref["port"])
    assert port["appProtocol"] == "kubernetes.io/h2c"
    deployment = one(overlay, "Deployment", "cascade-classifier")
    named = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert named[port["targetPort"]] == ref["port"]
    service = one(overlay, "Service", ref["name"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_policies_target_existing_objects(overlay: list[Obj], model_services: list[Obj]) -> None:
    routes = {r["metadata"]["name"] for r in find(overlay, "HTTPRoute")}
    gateways = {g["metadata"]["name"] for g in find(overlay, "Gateway")}
    extensions = {e["metadata"]["name"] for e in find(overlay, "GatewayExtension")}
    services = {s["metadata"]["name"] for s in find(overlay, "Service") + model_services}
    for policy in find(overlay, "TrafficPolicy"):
        for ref in policy["spec"]["targetRefs"]:
            assert (ref["group"], ref["kind"]) == (GATEWAY_API, "HTTPRoute")
            assert ref["name"] in routes
        assert policy["spec"]["extProc"]["extensionRef"]["name"] in extensions
    for policy in find(overlay, "ListenerPolicy"):
        for ref in policy["spec"]["targetRefs"]:
            # CEL: targetRefs may only reference Gateway resource
            assert (ref["group"], ref["kind"]) == (GATEWAY_API, "Gateway")
            assert ref["name"] in gateways
    for policy in find(overlay, "BackendConfigPolicy"):
        for ref in policy["spec"]["targetRefs"]:
            # CEL: a Kubernetes Service (group ""), a Backend or an Istio Hostname
            assert (ref["group"], ref["kind"]) == ("", "Service")
            assert ref["name"] in services, ref["name"]


def test_route_attaches_to_the_gateway_listener(overlay: list[Obj]) -> None:
    route = one(overlay, "HTTPRoute", "chat")
    for parent in route["spec"]["parentRefs"]:
        gateway = one(overlay, "Gateway", parent["name"])
        listeners = {item["name"]: item for item in gateway["spec"]["listeners"]}
        listener = listeners[parent["sectionName"]]
        assert listener["protocol"] == "HTTP"
        assert listener["allowedRoutes"]["namespaces"]["from"] == "Same"
        assert gateway["metadata"]["namespace"] == route["metadata"]["namespace"]


def test_route_backends_exist(overlay: list[Obj], model_services: list[Obj]) -> None:
    route = one(overlay, "HTTPRoute", "chat")
    services = find(overlay, "Service") + model_services
    for rule in route["spec"]["rules"]:
        assert rule["backendRefs"], rule["name"]
        for ref in rule["backendRefs"]:
            assert ref["kind"] == "Service"
            assert ref.get("group", "") == ""
            assert "port" in ref
            service_port(services, ref["name"], ref["port"])


# -- routing follows the cascade config -------------------------------------------------------------


def tier_rules(route: Obj) -> tuple[dict[str, Obj], list[Obj]]:
    by_tier: dict[str, Obj] = {}
    plain: list[Obj] = []
    for rule in route["spec"]["rules"]:
        values = {
            header["value"]
            for match in rule["matches"]
            for header in match.get("headers", [])
            if header["name"] == headers.TIER and header["type"] == "Exact"
        }
        if values:
            [tier] = values
            assert tier not in by_tier
            by_tier[tier] = rule
        else:
            plain.append(rule)
    return by_tier, plain


def test_one_rule_per_tier_and_a_header_less_default(overlay: list[Obj]) -> None:
    snapshot = snapshot_of(overlay)
    by_tier, plain = tier_rules(one(overlay, "HTTPRoute", "chat"))
    assert set(by_tier) == set(snapshot.tier_names)
    # The rule matched before classification and on fail-open: the default tier's stable backend.
    [default] = plain
    default_backends = [ref["name"] for ref in default["backendRefs"]]
    first_backend = by_tier[snapshot.default_tier]["backendRefs"][0]["name"]
    assert default_backends == [first_backend]
    assert snapshot.default_tier == snapshot.tier_names[0]
    # Same paths: a tier rule must never be less specific than the default one.
    paths = {m["path"]["value"] for rule in by_tier.values() for m in rule["matches"]}
    assert paths == {m["path"]["value"] for m in default["matches"]}
    for path in paths:
        assert any(p == path or p.startswith(path) for p in snapshot.server.paths)


def test_canary_splits_only_the_weak_tier(rendered: dict[str, list[Obj]]) -> None:
    by_tier, plain = tier_rules(one(rendered["canary"], "HTTPRoute", "chat"))
    weights = {ref["name"]: ref["weight"] for ref in by_tier["weak"]["backendRefs"]}
    assert weights == {"llm-weak": 90, "llm-weak-canary": 10}
    assert [ref["name"] for ref in plain[0]["backendRefs"]] == ["llm-weak"]
    stable, _ = tier_rules(one(rendered["kgateway"], "HTTPRoute", "chat"))
    assert by_tier["strong"] == stable["strong"]
    snapshot = snapshot_of(rendered["canary"])
    assert snapshot.canary is not None
    assert snapshot.canary.version in snapshot.classifiers
    assert snapshot.canary.weight == 10
    policy = one(rendered["canary"], "BackendConfigPolicy", "llm-tiers")
    assert {"group": "", "kind": "Service", "name": "llm-weak-canary"} in policy["spec"][
        "targetRefs"
    ]


def test_spoofed_headers_are_removed_before_route_selection(overlay: list[Obj]) -> None:
    policy = one(overlay, "ListenerPolicy")
    removed = policy["spec"]["default"]["httpSettings"]["earlyRequestHeaderModifier"]["remove"]
    owned = {
        value
        for value in vars(headers).values()
        if isinstance(value, str) and value.startswith(headers.PREFIX) and value != headers.PREFIX
    }
    assert {headers.TIER, headers.CLASSIFIER, headers.REASON} <= owned
    assert owned <= set(removed)
    assert len(removed) <= 16  # the CRD's maxItems


def test_listener_buffer_holds_what_the_classifier_reads(overlay: list[Obj]) -> None:
    policy = one(overlay, "ListenerPolicy")
    limit = policy["spec"]["default"]["perConnectionBufferLimitBytes"]
    assert limit >= snapshot_of(overlay).server.max_body_bytes


# -- the same behaviour as the rendered plain-Envoy config --------------------------------------------


def rendered_ext_proc(snapshot: Snapshot) -> dict[str, Any]:
    listener = bootstrap(snapshot)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [ext_proc] = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    config: dict[str, Any] = ext_proc["typed_config"]
    return config


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def test_gateway_extension_matches_the_rendered_envoy_filter(overlay: list[Obj]) -> None:
    spec = one(overlay, "GatewayExtension")["spec"]["extProc"]
    envoy = rendered_ext_proc(snapshot_of(overlay))
    assert spec["failOpen"] == envoy["failure_mode_allow"]
    assert duration_s(spec["messageTimeout"]) == float(envoy["message_timeout"].rstrip("s"))
    assert {camel(k): v for k, v in envoy["processing_mode"].items()} == spec["processingMode"]
    actions = {"DEFAULT": "FromResponse", "CLEAR": "Clear", "RETAIN": "Retain"}
    assert spec["routeCacheAction"] == actions[envoy.get("route_cache_action", "DEFAULT")]
    # kgateway's default for responseHeaderMode is SEND: it must be stated.
    assert spec["processingMode"]["responseHeaderMode"] == "SKIP"


def test_retries_and_timeouts_match_the_cascade_config(overlay: list[Obj]) -> None:
    snapshot = snapshot_of(overlay)
    policy = one(overlay, "TrafficPolicy")["spec"]
    assert duration_s(policy["timeouts"]["request"]) == snapshot.envoy.route_timeout_s
    retries = snapshot.envoy.retries
    retry = policy["retry"]
    assert retry["attempts"] == retries.num_retries
    assert retry["retryOn"] == list(retries.retry_on)
    assert retry["statusCodes"] == list(retries.status_codes)
    assert duration_s(retry["backoffBaseInterval"]) == retries.backoff_base_ms / 1000
    # No per-try timeout unless the config asks for one (it would cut long generations).
    assert ("perTryTimeout" in retry) == bool(retries.per_try_timeout_s)
    tiers = one(overlay, "BackendConfigPolicy", "llm-tiers")["spec"]
    assert tiers["circuitBreakers"]["maxRetries"] == retries.max_concurrent
    outlier = snapshot.envoy.outlier_detection
    assert tiers["outlierDetection"] == {
        "consecutive5xx": outlier.consecutive_5xx,
        "interval": f"{outlier.interval_ms // 1000}s",
        "baseEjectionTime": f"{outlier.base_ejection_ms // 1000}s",
        "maxEjectionPercent": outlier.max_ejection_percent,
    }
    assert tiers["outlierDetection"]["maxEjectionPercent"] == 100


def test_classifier_health_check_uses_the_ext_proc_health_service(overlay: list[Obj]) -> None:
    from extproc.app.run import EXT_PROC_SERVICE

    policy = one(overlay, "BackendConfigPolicy", "cascade-classifier")["spec"]
    check = policy["healthCheck"]
    # CEL: exactly one of http or grpc
    assert ("grpc" in check) != ("http" in check)
    assert check["grpc"]["serviceName"] == EXT_PROC_SERVICE
    deployment = one(overlay, "Deployment", "cascade-classifier")
    args = container(deployment)["args"]
    drain = float(args[args.index("--drain-delay") + 1])
    # NOT_SERVING is noticed by the gateway before the server stops accepting streams.
    assert duration_s(check["interval"]) * check["unhealthyThreshold"] < drain


# -- CEL rules jsonschema does not evaluate ------------------------------------------------------------


def cel_rules(schema: dict[str, Any], value: Any, path: str = "") -> list[tuple[str, str, Any]]:
    """(path, rule, value) for every x-kubernetes-validations rule on a node present in value."""
    found = [(path, rule["rule"], value) for rule in schema.get("x-kubernetes-validations", [])]
    if isinstance(value, dict):
        for key, child in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                found += cel_rules(sub, child, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            found += cel_rules(schema["items"], child, f"{path}[{index}]")
    return found


MATCHES = re.compile(r"^matches\(self, '(.+)'\)$")
AT_LEAST = re.compile(r"^duration\(self\) >= duration\('([0-9a-z]+)'\)$")


def test_cel_rules_on_kgateway_objects(
    overlay: list[Obj], crd_schemas_raw: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """The regex and minimum-duration rules evaluated; the object-level rules that matter
    checked one by one; any other rule on a field we set must be known here."""
    known_elsewhere = {
        # asserted in the tests above or below, by name
        "(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true",
        "has(self.http) != has(self.grpc)",
        "has(self.retryOn) || has(self.statusCodes)",
    }
    evaluated = 0
    for obj in overlay:
        if not obj["apiVersion"].startswith((KGATEWAY, GATEWAY_API)):
            continue
        schema = crd_schemas_raw[(obj["apiVersion"], obj["kind"])]
        for path, rule, value in cel_rules(schema, obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}{path}"
            if match := MATCHES.match(rule):
                assert re.search(match.group(1), value), f"{where}: {value!r} ~ {match.group(1)}"
                evaluated += 1
            elif match := AT_LEAST.match(rule):
                assert duration_s(value) >= duration_s(match.group(1)), where
                evaluated += 1
    assert evaluated >= 8
    assert known_elsewhere  # documented above; the object-level rules:
    for extension in find(overlay, "GatewayExtension"):
        spec = extension["spec"]
        kinds = [k for k in ("extAuth", "extProc", "rateLimit", "jwt", "oauth2") if k in spec]
        assert kinds == ["extProc"]  # exactly one of the fields in [extAuth extProc ...]
        assert spec.get("type", "ExtProc") == "ExtProc"  # extProc must be set when type is ExtProc
    for policy in find(overlay, "TrafficPolicy"):
        spec = policy["spec"]
        assert ("extensionRef" in spec["extProc"]) != ("disable" in spec["extProc"])
        assert "retryOn" in spec["retry"] or "statusCodes" in spec["retry"]
        if "perTryTimeout" in spec["retry"]:
            assert duration_s(spec["retry"]["perTryTimeout"]) < duration_s(
                spec["timeouts"]["request"]
            )
        # statPrefix/tracing/urlRewrite are allowed only when targeting routes: not set here
        assert not {"statPrefix", "tracing", "urlRewrite", "autoHostRewrite"} & set(spec)
    for policy in find(overlay, "BackendConfigPolicy"):
        spec = policy["spec"]
        if "tls" in spec:
            ways = ("secretRef", "files", "insecureSkipVerify", "wellKnownCACertificates")
            assert sum(way in spec["tls"] for way in ways) == 1
        breakers = spec.get("circuitBreakers", {})
        if breakers:
            assert set(breakers) & {
                "maxConnections",
                "maxPendingRequests",
                "maxRequests",
                "maxRetries",
            }
    for route in find(overlay, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            timeouts = rule.get("timeouts", {})
            if "backendRequest" in timeouts and "request" in timeouts:
                assert duration_s(timeouts["backendRequest"]) <= duration_s(timeouts["request"])


def test_cel_walk_finds_a_broken_duration(
    rendered: dict[str, list[Obj]], crd_schemas_raw: dict[tuple[str, str], dict[str, Any]]
) -> None:
    policy = one(rendered["kgateway"], "TrafficPolicy")
    schema = crd_schemas_raw[(policy["apiVersion"], policy["kind"])]
    broken = {**policy, "spec": {**policy["spec"], "timeouts": {"request": "5 minutes"}}}
    failures = [
        path
        for path, rule, value in cel_rules(schema, broken)
        if (match := MATCHES.match(rule)) and not re.search(match.group(1), value)
    ]
    assert failures == [".spec.timeouts.request"]


def test_tls_overlay_gateway_verifies_the_classifier(rendered: dict[str, list[Obj]]) -> None:
    tls = one(rendered["kgateway-tls"], "BackendConfigPolicy", "cascade-classifier")["spec"]["tls"]
    deployment = one(rendered["kgateway-tls"], "Deployment", "cascade-classifier")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert tls["secretRef"]["name"] == volumes["tls"]["secret"]["secretName"]
    assert tls["simpleTLS"] is True
    assert tls["verifySubjectAltNames"] == [tls["sni"]]
    assert "h2" in tls["alpnProtocols"]
    # The in-pod probe checks the same name the gateway verifies.
    probe = container(deployment)["readinessProbe"]["exec"]["command"]
    assert f'"grpc.ssl_target_name_override", "{tls["sni"]}"' in probe[2]
    service = tls["sni"].split(".")
    assert service[:2] == ["cascade-classifier", deployment["metadata"]["namespace"]]
