"""Every rendered object validates: built-in kinds against Kubernetes' own schemas (strict, so an
unknown field fails), kgateway, Gateway API and prometheus-operator kinds against the CRDs in
../shared/crds, closed so that a misspelt field fails as it would with `kubectl apply`."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import jsonschema
import pytest

from tests.k8s.conftest import KUBERNETES_VERSIONS, KUSTOMIZATIONS, find, one
from tests.k8s.kustomize import Obj

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import kubernetes_validate

BUILTIN_GROUPS = {
    "v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1",
}  # fmt: skip
Schemas = dict[tuple[str, str], dict[str, Any]]


def builtin_errors(obj: Obj, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


def crd_errors(obj: Obj, schemas: Schemas) -> list[str]:
    schema = schemas[(obj["apiVersion"], obj["kind"])]
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(obj)
    ]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_object_validates(
    rendered: dict[str, list[Obj]], crd_schemas: Schemas, name: str
) -> None:
    for obj in rendered[name]:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] in BUILTIN_GROUPS:
            for version in KUBERNETES_VERSIONS:
                assert builtin_errors(obj, version) == [], f"{where} (Kubernetes {version})"
        else:
            assert (obj["apiVersion"], obj["kind"]) in crd_schemas, f"{where}: no schema"
            assert crd_errors(obj, crd_schemas) == [], where


def test_crd_schemas_cover_the_kinds_used(crd_schemas: Schemas) -> None:
    # 11 CRD files, 15 served (apiVersion, kind) pairs (shared/crds/README.md).
    assert len(crd_schemas) == 15
    for kind in ("GatewayExtension", "TrafficPolicy", "ListenerPolicy", "BackendConfigPolicy"):
        assert ("gateway.kgateway.dev/v1alpha1", kind) in crd_schemas
    assert ("gateway.networking.k8s.io/v1", "HTTPRoute") in crd_schemas


# -- the validators catch what they must (negative controls) --------------------------------------


def test_misspelt_builtin_field_fails(rendered: dict[str, list[Obj]]) -> None:
    deployment = copy.deepcopy(one(rendered["base"], "Deployment", "cascade-classifier"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert builtin_errors(deployment, KUBERNETES_VERSIONS[-1])
    deployment = copy.deepcopy(one(rendered["base"], "Deployment", "cascade-classifier"))
    deployment["spec"]["replicas"] = "two"
    assert builtin_errors(deployment, KUBERNETES_VERSIONS[-1])


@pytest.mark.parametrize(
    ("kind", "path", "key", "value"),
    [
        ("GatewayExtension", ("spec", "extProc"), "procesingMode", {}),
        ("GatewayExtension", ("spec", "extProc", "processingMode"), "requestBodyMode", "BUFFERD"),
        ("TrafficPolicy", ("spec", "retry"), "retryHostPredicates", ["PreviousHosts"]),
        ("TrafficPolicy", ("spec",), "timeout", "300s"),
        ("ListenerPolicy", ("spec", "default", "httpSettings"), "earlyHeaderModifier", {}),
        ("BackendConfigPolicy", ("spec", "outlierDetection"), "maxEjectionPercent", 101),
        ("HTTPRoute", ("spec",), "rule", []),
        ("Gateway", ("spec", "listeners", 0), "protocl", "HTTP"),
    ],
)
def test_crd_mistakes_fail(
    rendered: dict[str, list[Obj]],
    crd_schemas: Schemas,
    kind: str,
    path: tuple[str | int, ...],
    key: str,
    value: object,
) -> None:

    def parent(obj: Obj) -> Any:
        node: Any = obj
        for part in path:
            node = node[part]
        return node

    for candidate in find(rendered["kgateway"], kind):
        try:
            parent(candidate)
        except (KeyError, IndexError):
            continue
        obj = copy.deepcopy(candidate)
        break
    else:
        pytest.fail(f"no {kind} with {path}")
    assert crd_errors(obj, crd_schemas) == []
    parent(obj)[key] = value
    assert crd_errors(obj, crd_schemas), f"{kind}: {key}={value!r} was accepted"


def test_misspelt_monitoring_field_fails(
    rendered: dict[str, list[Obj]], crd_schemas: Schemas
) -> None:
    monitor = copy.deepcopy(one(rendered["monitoring"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert crd_errors(monitor, crd_schemas)
    rule = copy.deepcopy(one(rendered["monitoring"], "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "vector(1)"
    assert crd_errors(rule, crd_schemas)
