"""The plain-Envoy overlay: its Envoy config is a fresh `cascade render envoy` of the overlay's
cascade config, the real Envoy binary accepts it with the Deployment's arguments, and the
addresses in it are Services of the overlay."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extproc.config.snapshot import compile_config
from extproc.gateway.common import EXT_PROC_CLUSTER
from extproc.gateway.render import render_yaml
from tests.k8s.conftest import K8S, container, find, one
from tests.k8s.kustomize import Obj

OVERLAY = K8S / "overlays" / "envoy"
ENVOY = Path(sys.executable).with_name("envoy")


def envoy_config_map(objects: list[Obj]) -> Obj:
    [config_map] = [
        o for o in find(objects, "ConfigMap") if o["metadata"]["name"].startswith("cascade-envoy-")
    ]
    return config_map


def test_envoy_config_is_a_fresh_render(rendered: dict[str, list[Obj]]) -> None:
    source = (OVERLAY / "cascade.yaml").read_text()
    fresh = render_yaml(compile_config(source, "k8s/overlays/envoy/cascade.yaml"))
    committed = (OVERLAY / "envoy.yaml").read_text()
    assert committed == fresh, (
        "k8s/overlays/envoy/envoy.yaml is stale: cascade render envoy "
        "--config k8s/overlays/envoy/cascade.yaml -o k8s/overlays/envoy/envoy.yaml"
    )
    objects = rendered["envoy"]
    assert envoy_config_map(objects)["data"]["envoy.yaml"] == fresh
    # The classifier reads the very same file.
    assert one(objects, "ConfigMap", "cascade-config")["data"]["cascade.yaml"] == source


def test_envoy_addresses_are_services(rendered: dict[str, list[Obj]]) -> None:
    snapshot = compile_config((OVERLAY / "cascade.yaml").read_text(), "cascade.yaml")
    services = {s["metadata"]["name"]: s for s in find(rendered["envoy"], "Service")}
    for address in snapshot.envoy.ext_proc:
        host, _, port = address.rpartition(":")
        service = services[host]
        # Headless: Envoy resolves every classifier pod and balances streams over them.
        assert service["spec"]["clusterIP"] == "None"
        [grpc_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    models = {s["metadata"]["name"]: s for s in find(rendered["mock-backends"], "Service")}
    for tier in snapshot.tiers:
        assert tier.backends, tier.name
        for backend in tier.backends:
            assert "." not in backend.address  # the overlay's namespace, whatever it is
            ports = {p["port"] for p in models[backend.address]["spec"]["ports"]}
            assert backend.port in ports


def test_envoy_deployment_matches_its_config(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["envoy"]
    snapshot = compile_config((OVERLAY / "cascade.yaml").read_text(), "cascade.yaml")
    deployment = one(objects, "Deployment", "cascade-envoy")
    main = container(deployment)
    listen_port = int(snapshot.envoy.listen.rpartition(":")[2])
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"http": listen_port}
    assert snapshot.envoy.admin.startswith("127.0.0.1:")  # admin API never on the pod network
    service = one(objects, "Service", "cascade-envoy")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    config_path = Path(main["args"][main["args"].index("--config-path") + 1])
    [mount] = [m for m in main["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["configMap"]["name"] == envoy_config_map(objects)["metadata"]["name"]
    assert {i["key"]: i["path"] for i in volume["configMap"]["items"]} == {
        "envoy.yaml": config_path.name
    }
    pod = deployment["spec"]["template"]["spec"]
    sleep = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > sleep
    assert main["image"].startswith("envoyproxy/envoy:distroless-v1.40")


def _validate(tmp_path: Path, objects: list[Obj]) -> subprocess.CompletedProcess[str]:
    main = container(one(objects, "Deployment", "cascade-envoy"))
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy_config_map(objects)["data"]["envoy.yaml"])
    args = list(main["args"])
    args[args.index("--config-path") + 1] = str(config)
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


requires_envoy = pytest.mark.skipif(
    not ENVOY.exists() and shutil.which("envoy") is None, reason="no envoy binary"
)
STATIC_WITH_NAME = "malformed IP address: cascade-classifier-pods"


@requires_envoy
def test_envoy_accepts_the_config_with_the_deployment_arguments(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    result = _validate(tmp_path, rendered["envoy"])
    # a Service name as the ext_proc address needs STRICT_DNS, not STATIC (fixed, kept checked)
    assert STATIC_WITH_NAME not in result.stderr
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@requires_envoy
def test_envoy_accepts_the_config_once_the_classifier_cluster_resolves_names(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """Everything else in the config and the arguments is valid (the ext_proc cluster made
    STRICT_DNS here, as it must be for a Service name)."""
    objects = copy.deepcopy(rendered["envoy"])
    config_map = envoy_config_map(objects)
    bootstrap = yaml.safe_load(config_map["data"]["envoy.yaml"])
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == EXT_PROC_CLUSTER:
            cluster["type"] = "STRICT_DNS"
    config_map["data"]["envoy.yaml"] = yaml.safe_dump(bootstrap)
    result = _validate(tmp_path, objects)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
