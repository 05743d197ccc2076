"""docs/kubernetes.md: its examples work on the real manifests, its tables match them, and it
states kgateway's limitations."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from extproc.config.snapshot import compile_config
from tests.conftest import ROOT
from tests.k8s.conftest import CRDS, K8S, KUSTOMIZATIONS, one
from tests.k8s.kustomize import build, json_patch
from tests.k8s.test_monitoring import rules

DOC = ROOT / "docs" / "kubernetes.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def block_with(text: str) -> str:
    [block] = [b for b in yaml_blocks() if text in b]
    return block


def test_readme_links_the_guide() -> None:
    assert "(docs/kubernetes.md)" in (ROOT / "README.md").read_text()


def test_paths_and_commands_refer_to_what_exists() -> None:
    text = DOC.read_text()
    for path in set(re.findall(r"(?<![\w/])k8s/[\w./-]+\w", text)):
        assert (ROOT / path).exists(), path
    for directory in KUSTOMIZATIONS.values():
        rel = directory.relative_to(ROOT).as_posix()
        assert rel in text, f"{rel} is not documented"
    for command in re.findall(r"kubectl apply -k ([\w./-]+)", text):
        assert (ROOT / command / "kustomization.yaml").exists(), command


def test_own_overlay_example_renders(tmp_path: Path) -> None:
    example = yaml.safe_load(block_with("kind: Kustomization"))
    overlay = tmp_path / "my-cluster"
    overlay.mkdir()
    example["resources"] = [str(K8S / "overlays" / "kgateway")]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(example))
    shutil.copy(K8S / "base" / "cascade.yaml", overlay / "cascade.yaml")
    objects = build(overlay)
    route = one(objects, "HTTPRoute", "chat")
    assert route["spec"]["rules"][0]["name"] == "tier-strong"
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "vllm-glm5"
    deployment = one(objects, "Deployment", "cascade-classifier")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.internal/ml/cascade-router:0.1.0"


def test_threshold_patch_example_applies(rendered: dict[str, list[dict]]) -> None:
    [patch] = yaml.safe_load(block_with("kind: PrometheusRule"))["patches"]
    rule = copy.deepcopy(one(rendered["monitoring"], "PrometheusRule", patch["target"]["name"]))
    json_patch(rule, yaml.safe_load(patch["patch"]))
    assert rule["spec"]["groups"][0]["rules"][0]["expr"] == "vector(400)"


def test_parameter_and_alert_tables_match_the_rules() -> None:
    text = DOC.read_text()
    params = {
        r["record"]: r["expr"] for r in rules() if r.get("record", "").startswith("cascade:param")
    }
    for name, expr in params.items():
        value = expr.removeprefix("vector(").removesuffix(")")
        short = name.rsplit("_", 1)[0] if name.endswith(("_min", "_max")) else name
        assert short in text, name
        row = next(line for line in text.splitlines() if f"`{short}" in line and "|" in line)
        assert value in row, (name, row)
    for alert in (r["alert"] for r in rules() if "alert" in r):
        assert f"`{alert}`" in text


def test_envoy_tls_snippet_is_a_valid_transport_socket() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401

    snippet = yaml.safe_load(block_with("UpstreamTlsContext"))
    cluster = cluster_pb2.Cluster()
    json_format.ParseDict({"name": "cascade_extproc", **snippet}, cluster)
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"


@pytest.mark.parametrize(
    "limitation",
    [
        "No retry priority",
        "No Retry-After back-off",
        "No `noTrafficInterval`",
        "Buffer placement",
        "without `earlyRequestHeaderModifier`",
        "no response attributes",
        "No forward rules: the client's `Authorization` reaches the classifier",
    ],
)
def test_kgateway_limitations_are_stated(limitation: str) -> None:
    section = DOC.read_text().split("## What kgateway cannot express", 1)[1].split("\n## ", 1)[0]
    assert limitation.lower() in section.lower()


def test_the_validated_versions_are_named() -> None:
    """The kgateway commit of the CRD schemas the tests validate against, and the Envoy image
    of the plain-Envoy overlay, are the ones the guide names."""
    text = DOC.read_text()
    crds = (CRDS / "README.md").read_text()
    [commit] = re.findall(r"`main` at `([0-9a-f]{40})`", crds)
    assert commit in text
    assert "Gateway API v1.6.1" in text and "v1.6.1" in crds
    kustomization = yaml.safe_load((K8S / "overlays" / "envoy" / "kustomization.yaml").read_text())
    [image] = [i for i in kustomization["images"] if i["name"] == "envoyproxy/envoy"]
    assert f"envoyproxy/envoy:{image['newTag']}" in text


def test_the_hosted_api_excerpt_is_a_valid_tier() -> None:
    [tier] = yaml.safe_load(block_with("credential: {file: /etc/envoy-credentials/openai}"))
    weak = {"name": "weak", "model": "small", "backends": [{"address": "10.0.0.1:8000"}]}
    document = {
        "tiers": [weak, tier],
        "classifier": "v1",
        "classifiers": {"v1": {"default": "weak"}},
    }
    snapshot = compile_config(yaml.safe_dump(document))
    (backend,) = snapshot.tier("strong").backends
    assert backend.credential is not None
    assert backend.credential.file == "/etc/envoy-credentials/openai"
    assert "## Hosted APIs as tiers" in DOC.read_text()
