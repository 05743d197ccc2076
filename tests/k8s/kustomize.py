"""A small kustomize: the subset of `kubectl kustomize` that k8s/ uses, so CI needs no kubectl.

Supported kustomization fields: `resources` (files and directories), `namespace`, `labels`
(`pairs`, `includeSelectors: false`, `includeTemplates`), `configMapGenerator` (`files`,
`behavior`, `options.disableNameSuffixHash`, `options.labels`), `patches` (RFC 6902 JSON patches
from `path` or `patch`, selected by `target` group/version/kind/name) and `images`. Anything
else raises `Unsupported`, so a kustomization using more than this fails the tests instead of
rendering differently from kubectl. test_render.py compares the output with `kubectl kustomize`
wherever kubectl exists.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "patches",
    "images",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "GatewayClass",
    "StorageClass",
    "PriorityClass",
    "PersistentVolume",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_NEEDS_HASH = "needs-hash"


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


@dataclass
class _Build:
    objects: list[Obj] = field(default_factory=list)
    #: ids (kind, name) of generated ConfigMaps that get a content hash suffix at the end
    hashed: set[tuple[str, str]] = field(default_factory=set)


def build(directory: Path) -> list[Obj]:
    """Render the kustomization in `directory`: the list of objects `kubectl kustomize` prints."""
    result = _build(Path(directory))
    _apply_hashes(result)
    return result.objects


def load_kustomization(directory: Path) -> Obj:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text())
            unknown = set(data) - SUPPORTED_KEYS
            if unknown:
                raise Unsupported(f"{path}: unsupported fields {sorted(unknown)}")
            return data
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _build(directory: Path) -> _Build:
    spec = load_kustomization(directory)
    result = _Build()
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            child = _build(path)
            result.objects.extend(child.objects)
            result.hashed |= child.hashed
        else:
            result.objects.extend(
                doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None
            )
    for generator in spec.get("configMapGenerator", []):
        _generate_config_map(directory, generator, result)
    _check_unique(result.objects, directory)
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, result.objects)
    if "namespace" in spec:
        for obj in result.objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        _apply_labels(label, result.objects)
    for image in spec.get("images", []):
        _apply_image(image, result.objects)
    return result


def _check_unique(objects: list[Obj], directory: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        key = (
            obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else "",
            obj["kind"],
            obj.get("metadata", {}).get("namespace", ""),
            obj["metadata"]["name"],
        )
        if key in seen:
            raise ValueError(f"{directory}: {key} defined twice")
        seen.add(key)


# -- configMapGenerator --------------------------------------------------------------------------


def _generate_config_map(directory: Path, generator: Obj, result: _Build) -> None:
    unknown = set(generator) - {"name", "files", "behavior", "options"}
    if unknown:
        raise Unsupported(f"configMapGenerator fields {sorted(unknown)}")
    options = generator.get("options", {})
    unknown = set(options) - {"disableNameSuffixHash", "labels"}
    if unknown:
        raise Unsupported(f"configMapGenerator options {sorted(unknown)}")
    name = generator["name"]
    data: dict[str, str] = {}
    for item in generator.get("files", []):
        key, sep, source = item.partition("=")
        path = directory / (source if sep else key)
        data[Path(key).name if not sep else key] = path.read_text()
    labels = dict(options.get("labels", {}))
    behavior = generator.get("behavior", "create")
    key = ("ConfigMap", name)
    if behavior == "create":
        obj: Obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
        if labels:
            obj["metadata"]["labels"] = labels
        obj["data"] = data
        result.objects.append(obj)
    elif behavior in ("replace", "merge"):
        matches = [
            o for o in result.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
        ]
        if len(matches) != 1:
            raise ValueError(f"configMapGenerator {behavior}: no single ConfigMap {name!r}")
        obj = matches[0]
        obj["data"] = data if behavior == "replace" else {**obj.get("data", {}), **data}
        if labels:
            obj["metadata"].setdefault("labels", {}).update(labels)
        result.hashed.discard(key)
    else:
        raise Unsupported(f"configMapGenerator behavior {behavior!r}")
    if not options.get("disableNameSuffixHash", False):
        result.hashed.add(key)


def content_hash(obj: Obj) -> str:
    """kustomize's ConfigMap name suffix: sha256 of the Go-JSON of kind, name and data.

    kustomize v5 looks the name up with one path segment "metadata/name", finds nothing and
    hashes an empty name; so does this, to produce the same suffix.
    """
    encoded = json.dumps(
        {"data": obj.get("data", {}), "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # Go's encoding/json escapes these three for HTML safety.
    encoded = encoded.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _apply_hashes(result: _Build) -> None:
    renamed: dict[str, str] = {}
    for obj in result.objects:
        if obj["kind"] == "ConfigMap" and ("ConfigMap", obj["metadata"]["name"]) in result.hashed:
            old = obj["metadata"]["name"]
            obj["metadata"]["name"] = f"{old}-{content_hash(obj)}"
            renamed[old] = obj["metadata"]["name"]
    for obj in result.objects:
        for pod in _pod_specs(obj):
            for volume in pod.get("volumes", []):
                if "configMap" in volume and volume["configMap"]["name"] in renamed:
                    volume["configMap"]["name"] = renamed[volume["configMap"]["name"]]
                for source in volume.get("projected", {}).get("sources", []):
                    ref = source.get("configMap")
                    if ref and ref["name"] in renamed:
                        ref["name"] = renamed[ref["name"]]
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                for env in container.get("envFrom", []):
                    ref = env.get("configMapRef")
                    if ref and ref["name"] in renamed:
                        ref["name"] = renamed[ref["name"]]
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("configMapKeyRef")
                    if ref and ref["name"] in renamed:
                        ref["name"] = renamed[ref["name"]]


# -- patches ------------------------------------------------------------------------------------


def _apply_patch(directory: Path, patch: Obj, objects: list[Obj]) -> None:
    unknown = set(patch) - {"target", "path", "patch"}
    if unknown:
        raise Unsupported(f"patch fields {sorted(unknown)}")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise Unsupported("only RFC 6902 JSON patches (a list of operations) are supported")
    target = patch.get("target")
    if not target:
        raise Unsupported("a JSON patch needs a target")
    unknown = set(target) - {"group", "version", "kind", "name"}
    if unknown:
        raise Unsupported(f"patch target fields {sorted(unknown)}")
    matched = [obj for obj in objects if _matches(obj, target)]
    if not matched:
        raise ValueError(f"patch target {target} matches nothing")
    for obj in matched:
        json_patch(obj, operations)


def _matches(obj: Obj, target: Obj) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        target.get("group", group) == group
        and target.get("version", version) == version
        and target.get("kind", obj["kind"]) == obj["kind"]
        and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
    )


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def json_patch(doc: Obj, operations: list[Obj]) -> None:
    """Apply RFC 6902 `add`, `remove`, `replace` and `test` in place."""
    for operation in operations:
        op = operation["op"]
        parts = _pointer(operation["path"])
        parent = _parent(doc, parts)
        last = parts[-1]
        if op == "test":
            actual = parent[int(last)] if isinstance(parent, list) else parent[last]
            if actual != operation["value"]:
                raise ValueError(f"test failed at {operation['path']}: {actual!r}")
        elif op == "add":
            value = copy.deepcopy(operation["value"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                else:
                    parent.insert(int(last), value)
            else:
                parent[last] = value
        elif op == "replace":
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(operation["value"])
            else:
                if last not in parent:
                    raise ValueError(f"replace of a missing member {operation['path']}")
                parent[last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        else:
            raise Unsupported(f"JSON patch op {op!r}")


# -- labels and images --------------------------------------------------------------------------


def _pod_templates(obj: Obj) -> list[Obj]:
    if obj["kind"] in POD_TEMPLATE_KINDS:
        return [obj["spec"]["template"]]
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]]
    return []


def _pod_specs(obj: Obj) -> list[Obj]:
    return [template["spec"] for template in _pod_templates(obj)]


def _apply_labels(label: Obj, objects: list[Obj]) -> None:
    unknown = set(label) - {"pairs", "includeSelectors", "includeTemplates"}
    if unknown or label.get("includeSelectors", False):
        raise Unsupported(f"labels entry {label}: only pairs with includeSelectors: false")
    pairs = label["pairs"]
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if label.get("includeTemplates", False):
            for template in _pod_templates(obj):
                template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _apply_image(image: Obj, objects: list[Obj]) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise Unsupported(f"images entry fields {sorted(unknown)}")
    for obj in objects:
        for pod in _pod_specs(obj):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name, tag = split_image(container["image"])
                if name != image["name"]:
                    continue
                new = image.get("newName", name)
                if "digest" in image:
                    container["image"] = f"{new}@{image['digest']}"
                elif "newTag" in image:
                    container["image"] = f"{new}:{image['newTag']}"
                else:
                    container["image"] = f"{new}{tag}"


def split_image(reference: str) -> tuple[str, str]:
    """`repo/name:tag` → (`repo/name`, `:tag`); the registry port is not a tag."""
    if "@" in reference:
        name, _, digest = reference.partition("@")
        return name, "@" + digest
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon:]
    return reference, ""
