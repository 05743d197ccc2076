"""Fixtures for the Kubernetes manifests: rendered kustomizations and the CRD schemas."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, SHARED
from tests.k8s.kustomize import Obj, build

K8S = ROOT / "k8s"
CRDS = SHARED / "crds"
#: Every kustomization a platform engineer may apply, and what it needs installed first.
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "kgateway": K8S / "overlays" / "kgateway",
    "envoy": K8S / "overlays" / "envoy",
    "envoy-mtls": K8S / "overlays" / "envoy-mtls",
    "canary": K8S / "overlays" / "canary",
    "kgateway-tls": K8S / "overlays" / "kgateway-tls",
    "monitoring": K8S / "monitoring",
    "mock-backends": K8S / "examples" / "mock-backends",
    "quality-loop": K8S / "examples" / "quality-loop",
}
#: The overlays that route traffic (each has the classifier in it).
ROUTING_OVERLAYS = ("kgateway", "envoy", "canary", "kgateway-tls", "envoy-mtls")
#: The overlays with the plain Envoy Deployment cascade-envoy in front of the classifier.
ENVOY_OVERLAYS = ("envoy", "envoy-mtls")
KGATEWAY_OVERLAYS = ("kgateway", "canary", "kgateway-tls")
#: Kubernetes versions whose built-in schemas the manifests must satisfy.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Obj]]:
    return {name: build(path) for name, path in KUSTOMIZATIONS.items()}


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        obj
        for obj in objects
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    matches = find(objects, kind, name)
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def container(deployment: Obj, name: str | None = None) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


# -- CRD schemas ---------------------------------------------------------------------------------


def close_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy in which an object with `properties` accepts no other keys (shared/crds/README)."""
    closed = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if not isinstance(node, dict):
            return
        properties = node.get("properties")
        if (
            properties
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for child in (properties or {}).values():
            walk(child)
        if isinstance(node.get("items"), dict):
            walk(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(closed)
    return closed


def iter_crd_schemas() -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                yield (f"{group}/{version['name']}", kind), version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → closed OpenAPI schema, from ../shared/crds."""
    if not CRDS.is_dir():
        pytest.skip(f"CRD schemas not found at {CRDS}")
    return {key: close_schema(schema) for key, schema in iter_crd_schemas()}


@pytest.fixture(scope="session")
def crd_schemas_raw() -> dict[tuple[str, str], dict[str, Any]]:
    """The schemas as upstream ships them (with x-kubernetes-validations), not closed."""
    if not CRDS.is_dir():
        pytest.skip(f"CRD schemas not found at {CRDS}")
    return dict(iter_crd_schemas())


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
