"""Who may reach the classifier: in every overlay that deploys it, its pods are isolated, only the
overlay's own Envoy pods reach the gRPC port, only Prometheus the metrics port, and the pods may
connect to cluster DNS and nothing else. Checked on the selectors and, by evaluating the
policies the way a network plugin does, on a set of pods that should and should not get in.
Also: the pod's memory limit covers the h2 transport's own bounds."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import (
    ENVOY_OVERLAYS,
    KGATEWAY_OVERLAYS,
    ROUTING_OVERLAYS,
    container,
    find,
    one,
)
from tests.k8s.kustomize import Obj, json_patch
from tests.k8s.test_docs import block_with

NAMESPACE = "cascade"
MONITORING = "monitoring"
CLASSIFIER = "cascade-classifier"
#: every kustomization that deploys the classifier
CLASSIFIER_KUSTOMIZATIONS = ("base", *ROUTING_OVERLAYS)
#: labels prometheus-operator puts on the pods of a Prometheus `k8s` (kube-prometheus-stack's too)
PROMETHEUS_POD = {
    "app.kubernetes.io/name": "prometheus",
    "app.kubernetes.io/instance": "k8s",
    "app.kubernetes.io/managed-by": "prometheus-operator",
    "prometheus": "k8s",
}


def kgateway_proxy_labels(gateway: Obj) -> dict[str, str]:
    """The pod labels kgateway's deployer gives the Envoy proxy of `gateway` (its helm chart:
    the selector labels, from the Gateway's name, plus `kgateway: kube-gateway`)."""
    name = gateway["metadata"]["name"]
    return {
        "kgateway": "kube-gateway",
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": name,
        "gateway.networking.k8s.io/gateway-name": name,
    }


# -- a small NetworkPolicy evaluator ------------------------------------------------------------


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    #: container port name → number
    ports: dict[str, int] = field(default_factory=dict)


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    unknown = set(selector) - {"matchLabels"}
    assert not unknown, f"the evaluator does not know {unknown}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}  # set by the API server on every namespace


def peer_admits(peer: Obj, policy_namespace: str, source: Pod) -> bool:
    assert "ipBlock" not in peer, "no address-based rules"
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], namespace_labels(source.namespace)):
            return False
    elif source.namespace != policy_namespace:
        return False
    return matches(peer.get("podSelector", {}), source.labels)


def port_admits(rule_ports: list[Obj] | None, destination: Pod, port: int) -> bool:
    if rule_ports is None:
        return True
    for item in rule_ports:
        assert item.get("protocol", "TCP") in {"TCP", "UDP"}
        if item.get("protocol", "TCP") != "TCP":
            continue
        wanted = item["port"]
        number = destination.ports.get(wanted) if isinstance(wanted, str) else wanted
        if number == port:
            return True
    return False


def ingress_allowed(objects: list[Obj], source: Pod, destination: Pod, port: int) -> bool:
    """Whether a TCP connection from `source` to `destination:port` is allowed."""
    policies = [
        p
        for p in find(objects, "NetworkPolicy")
        if p["metadata"]["namespace"] == destination.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and matches(p["spec"]["podSelector"], destination.labels)
    ]
    if not policies:
        return True  # not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if peers is not None and not any(
                peer_admits(peer, policy["metadata"]["namespace"], source) for peer in peers
            ):
                continue
            if port_admits(rule.get("ports"), destination, port):
                return True
    return False


def pod_of(deployment: Obj) -> Pod:
    template = deployment["spec"]["template"]
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports", [])
    }
    return Pod(
        deployment["metadata"]["name"],
        deployment["metadata"]["namespace"],
        template["metadata"]["labels"],
        ports,
    )


def gateway_pods(objects: list[Obj]) -> list[Pod]:
    """The Envoy pods in front of the classifier in this overlay (none in base)."""
    pods = [
        pod_of(d) for d in find(objects, "Deployment") if d["metadata"]["name"] == "cascade-envoy"
    ]
    pods += [
        Pod(f"proxy-{g['metadata']['name']}", g["metadata"]["namespace"], kgateway_proxy_labels(g))
        for g in find(objects, "Gateway")
    ]
    return pods


def outsiders(rendered: dict[str, list[Obj]], objects: list[Obj]) -> list[Pod]:
    """Pods that must reach neither port."""
    pods = [pod_of(d) for d in find(rendered["mock-backends"], "Deployment")]
    pods.append(pod_of(one(objects, "Deployment", CLASSIFIER)))  # a classifier pod, as a client
    pods.append(Pod("debug-shell", NAMESPACE, {"run": "debug-shell"}))
    # An Envoy or kgateway proxy of another namespace or of another Gateway.
    pods.append(Pod("other-envoy", "team-b", {"app.kubernetes.io/name": "cascade-envoy"}))
    other = {"metadata": {"name": "other-gateway", "namespace": NAMESPACE}}
    pods.append(Pod("other-gateway-proxy", NAMESPACE, kgateway_proxy_labels(other)))
    pods.append(Pod("grafana", MONITORING, {"app.kubernetes.io/name": "grafana"}))
    # Prometheus' labels outside the monitoring namespace.
    pods.append(Pod("fake-prometheus", NAMESPACE, dict(PROMETHEUS_POD)))
    return pods


PROMETHEUS = Pod("prometheus-k8s-0", MONITORING, PROMETHEUS_POD)


@pytest.fixture(params=CLASSIFIER_KUSTOMIZATIONS)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def classifier_pod(objects: list[Obj]) -> Pod:
    return pod_of(one(objects, "Deployment", CLASSIFIER))


def service_port(objects: list[Obj], port_name: str) -> int:
    service = one(objects, "Service", CLASSIFIER)
    [port] = [p for p in service["spec"]["ports"] if p["name"] == port_name]
    number: int = port["port"]
    return number


# -- the tests ------------------------------------------------------------------------------------


def test_every_classifier_kustomization_isolates_the_classifier(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    objects = rendered[name]
    pod = classifier_pod(objects)
    selecting = [
        p for p in find(objects, "NetworkPolicy") if matches(p["spec"]["podSelector"], pod.labels)
    ]
    isolating = [p for p in selecting if set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}]
    assert [p["metadata"]["name"] for p in isolating] == [CLASSIFIER]
    # Every policy selects the classifier pods exactly: the Deployment's own selector labels.
    deployment = one(objects, "Deployment", CLASSIFIER)
    for policy in selecting:
        assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    if name != "base":
        gateway_policies = [p for p in selecting if p["metadata"]["name"] != CLASSIFIER]
        assert len(gateway_policies) == 1, "one policy admits the gateway"


def test_only_the_gateway_reaches_grpc_and_only_prometheus_metrics(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    objects = rendered[name]
    classifier = classifier_pod(objects)
    grpc, metrics = service_port(objects, "grpc"), service_port(objects, "metrics")
    assert classifier.ports["grpc"] == grpc and classifier.ports["metrics"] == metrics
    gateways = gateway_pods(objects)
    assert bool(gateways) == (name != "base")
    for gateway in gateways:
        assert ingress_allowed(objects, gateway, classifier, grpc), gateway.name
        assert not ingress_allowed(objects, gateway, classifier, metrics), gateway.name
    assert ingress_allowed(objects, PROMETHEUS, classifier, metrics)
    assert not ingress_allowed(objects, PROMETHEUS, classifier, grpc)
    for outsider in outsiders(rendered, objects):
        for port in (grpc, metrics, 8080, 9901):
            assert not ingress_allowed(objects, outsider, classifier, port), (outsider.name, port)


@pytest.mark.parametrize("overlay", ROUTING_OVERLAYS)
def test_gateway_selector_matches_the_real_envoy_pods(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    policies = [p for p in find(objects, "NetworkPolicy") if p["metadata"]["name"] != CLASSIFIER]
    [policy] = policies
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}  # the gateway runs in this namespace
    selector = peer["podSelector"]["matchLabels"]
    if overlay in ENVOY_OVERLAYS:
        envoy = one(objects, "Deployment", "cascade-envoy")
        assert selector.items() <= envoy["spec"]["template"]["metadata"]["labels"].items()
        assert selector == envoy["spec"]["selector"]["matchLabels"]
    else:
        assert overlay in KGATEWAY_OVERLAYS
        [gateway] = find(objects, "Gateway")
        assert gateway["spec"]["gatewayClassName"] == "kgateway"
        # The Gateway API label of generated resources, nothing kgateway-version specific.
        assert selector == {"gateway.networking.k8s.io/gateway-name": gateway["metadata"]["name"]}
    assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]


def test_policy_ports_are_the_services_named_ports(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    objects = rendered[name]
    service_ports = {p["name"]: p for p in one(objects, "Service", CLASSIFIER)["spec"]["ports"]}
    container_ports = {
        p["name"] for p in container(one(objects, "Deployment", CLASSIFIER))["ports"]
    }
    for policy in find(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), "no rule admits everyone"
            assert rule.get("ports"), "no rule opens every port"
            for port in rule["ports"]:
                assert port["port"] in service_ports, port
                assert service_ports[port["port"]]["targetPort"] == port["port"]
                assert port["port"] in container_ports


def test_egress_is_cluster_dns_only(rendered: dict[str, list[Obj]], name: str) -> None:
    policy = one(rendered[name], "NetworkPolicy", CLASSIFIER)
    [dns] = policy["spec"]["egress"]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    # No other policy lets the classifier connect anywhere.
    for other in find(rendered[name], "NetworkPolicy"):
        if other is not policy:
            assert "Egress" not in other["spec"]["policyTypes"]


def test_the_evaluator_sees_an_open_namespace(rendered: dict[str, list[Obj]]) -> None:
    """Negative control: without the policies anyone gets in (so the checks above can fail)."""
    objects = [o for o in rendered["envoy"] if o["kind"] != "NetworkPolicy"]
    classifier = classifier_pod(rendered["envoy"])
    intruder = Pod("debug-shell", NAMESPACE, {"run": "debug-shell"})
    assert ingress_allowed(objects, intruder, classifier, classifier.ports["grpc"])
    wide = copy.deepcopy(rendered["envoy"])
    one(wide, "NetworkPolicy", "cascade-classifier-from-envoy")["spec"]["ingress"][0]["from"][0][
        "podSelector"
    ] = {}
    assert ingress_allowed(wide, intruder, classifier, classifier.ports["grpc"])


def test_docs_prometheus_namespace_and_egress_patches_apply(rendered: dict[str, list[Obj]]) -> None:
    example = yaml.safe_load(block_with("kind: NetworkPolicy"))
    objects = copy.deepcopy(rendered["kgateway"])
    for patch in example["patches"]:
        [target] = [
            o
            for o in objects
            if o["kind"] == patch["target"]["kind"]
            and o["metadata"]["name"] == patch["target"]["name"]
        ]
        json_patch(target, yaml.safe_load(patch["patch"]))
    classifier = classifier_pod(objects)
    elsewhere = Pod("prometheus-0", "observability", PROMETHEUS_POD)
    assert ingress_allowed(objects, elsewhere, classifier, classifier.ports["metrics"])
    assert not ingress_allowed(objects, PROMETHEUS, classifier, classifier.ports["metrics"])
    egress = one(objects, "NetworkPolicy", CLASSIFIER)["spec"]["egress"]
    assert len(egress) == 2
    assert {p["port"] for p in egress[1]["ports"]} == {6379}


# -- memory limit from the transport's bounds ------------------------------------------------------

MiB = 1024 * 1024
#: `cascade serve` idle RSS measured on both transports (48–52 MiB, Python 3.11), rounded up
BASELINE = 64 * MiB
#: per open connection beyond its buffers: protocol state, TLS objects and record buffers
PER_CONNECTION = 64 * 1024


def parse_quantity(text: str) -> int:
    units = {"Ki": 1024, "Mi": MiB, "Gi": 1024 * MiB}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def memory_bound(
    config_text: str, config_dir: Path, args: list[str] | None = None
) -> dict[str, int]:
    """The terms of docs/kubernetes.md's sizing, from the limits `cascade serve` would use with
    this config and these Deployment arguments (their `--h2-limit` overrides included)."""
    pytest.importorskip(
        "extproc.transport.h2.limits", reason="no transport limits: nothing bounds the pod"
    )
    from extproc.app.run import CascadeServer, ServeOptions
    from extproc.cli.main import build_parser

    config = config_dir / "cascade.yaml"
    config.write_text(config_text)
    parsed = build_parser().parse_args(args or ["serve"])
    overrides = dict(item.split("=", 1) for item in getattr(parsed, "h2_limit", None) or [])
    server = CascadeServer(ServeOptions(config=config, h2_limits=overrides))
    limits = server.transport_limits()
    body = server.store.current.server.max_body_bytes
    return {
        "baseline": BASELINE,
        "output before reads stop": limits.max_connections * limits.write_high_water,
        "inbound partial messages": min(
            limits.max_connections * limits.max_buffered_bytes, limits.max_buffered_total
        ),
        "connection state": limits.max_connections * PER_CONNECTION,
        # the message handed to the classifier, and its decoded text (parsed up to max_body_bytes)
        "body being classified": limits.max_message + body,
    }


@pytest.mark.parametrize("overlay", CLASSIFIER_KUSTOMIZATIONS)
def test_memory_limit_covers_the_transport_bounds(
    rendered: dict[str, list[Obj]], overlay: str, tmp_path: Path
) -> None:
    objects = rendered[overlay]
    main = container(one(objects, "Deployment", CLASSIFIER))
    assert (
        main["args"][main["args"].index("--transport") + 1] == "h2"
        if "--transport" in main["args"]
        else True
    )
    config_text = one(objects, "ConfigMap", "cascade-config")["data"]["cascade.yaml"]
    terms = memory_bound(config_text, tmp_path, main["args"])
    limit = parse_quantity(main["resources"]["limits"]["memory"])
    total = sum(terms.values())
    assert limit >= total, f"{limit / MiB:.0f} Mi < {total / MiB:.0f} Mi: {terms}"
    # ... and not far above it: a limit is only a bound if it is near what can be used.
    assert limit <= 1.25 * total, f"{limit / MiB:.0f} Mi for {total / MiB:.0f} Mi"
    request = parse_quantity(main["resources"]["requests"]["memory"])
    assert BASELINE < request <= limit


def test_sizing_arithmetic_is_the_documented_one(tmp_path: Path) -> None:
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "kubernetes.md").read_text()
    section = text.split("### Memory limit", 1)[1].split("\n## ", 1)[0]
    terms = memory_bound((ROOT / "k8s" / "base" / "cascade.yaml").read_text(), tmp_path)
    for value in terms.values():
        assert f"{value // MiB} Mi" in section, value
    assert f"= {sum(terms.values()) // MiB} Mi" in section
