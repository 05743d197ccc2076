"""Every kustomization renders; the small renderer agrees with `kubectl kustomize`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import KUSTOMIZATIONS, find
from tests.k8s.kustomize import Obj, Unsupported, build, content_hash, json_patch, split_image

NAMESPACE = "cascade"


def _key(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_renders_into_one_namespace(rendered: dict[str, list[Obj]], name: str) -> None:
    objects = rendered[name]
    assert objects
    keys = [_key(obj) for obj in objects]
    assert len(keys) == len(set(keys))
    for obj in objects:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, _key(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cascade-router"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_same_output_as_kubectl_kustomize(rendered: dict[str, list[Obj]], name: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = {_key(obj): obj for obj in yaml.safe_load_all(out) if obj}
    mine = {_key(obj): obj for obj in rendered[name]}
    assert sorted(mine) == sorted(theirs)
    for key, obj in mine.items():
        assert obj == theirs[key], key


def test_content_hash_matches_kustomize() -> None:
    # `kubectl kustomize` (kustomize v5.5) names a generated ConfigMap with one file a.txt
    # holding "hello\n" x-7bbhf79gm2, whatever the ConfigMap's name.
    for name in ("x", "cascade-envoy"):
        config_map = {"metadata": {"name": name}, "data": {"a.txt": "hello\n"}}
        assert content_hash(config_map) == "7bbhf79gm2"
    assert content_hash({"metadata": {"name": "x"}, "data": {"a.txt": "hello!\n"}}) != (
        "7bbhf79gm2"
    )


def test_hashed_config_map_is_renamed_where_it_is_mounted(
    rendered: dict[str, list[Obj]],
) -> None:
    envoy = rendered["envoy"]
    [config_map] = [
        o for o in find(envoy, "ConfigMap") if o["metadata"]["name"] != "cascade-config"
    ]
    assert config_map["metadata"]["name"] == "cascade-envoy-" + content_hash(config_map)
    [deployment] = find(envoy, "Deployment", "cascade-envoy")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config"} | volumes[0] == volumes[0]
    assert volumes[0]["configMap"]["name"] == config_map["metadata"]["name"]
    # The classifier's config keeps its name, so edits update it in place (hot reload).
    assert find(envoy, "ConfigMap", "cascade-config")


def test_json_patch_operations() -> None:
    doc: Obj = {"spec": {"rules": [{"name": "a"}, {"name": "b"}], "x": 1}}
    json_patch(
        doc,
        [
            {"op": "test", "path": "/spec/rules/1/name", "value": "b"},
            {"op": "add", "path": "/spec/rules/-", "value": {"name": "c"}},
            {"op": "add", "path": "/spec/rules/0", "value": {"name": "z"}},
            {"op": "replace", "path": "/spec/x", "value": 2},
            {"op": "remove", "path": "/spec/rules/1"},
            {"op": "add", "path": "/spec/a~1b", "value": True},
        ],
    )
    assert doc == {
        "spec": {"rules": [{"name": "z"}, {"name": "b"}, {"name": "c"}], "x": 2, "a/b": True}
    }
    with pytest.raises(ValueError, match="test failed"):
        json_patch(doc, [{"op": "test", "path": "/spec/x", "value": 3}])
    with pytest.raises(ValueError, match="missing"):
        json_patch(doc, [{"op": "replace", "path": "/spec/y", "value": 3}])


def test_unsupported_kustomize_features_fail_loudly(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("commonLabels: {a: b}\nresources: []\n")
    with pytest.raises(Unsupported, match="commonLabels"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n- target: {kind: ConfigMap}\n  patch: 'data: {a: b}'\n"
    )
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    with pytest.raises(Unsupported, match="JSON patches"):
        build(tmp_path)


def test_split_image() -> None:
    assert split_image("cascade-router") == ("cascade-router", "")
    assert split_image("registry:5000/team/cascade-router:0.1.0") == (
        "registry:5000/team/cascade-router",
        ":0.1.0",
    )
    assert split_image("envoyproxy/envoy@sha256:ab") == ("envoyproxy/envoy", "@sha256:ab")
