"""The shipped Envoy configs are the renderer's output and Envoy accepts every one of them.

Pairs: `envoy/cascade.yaml` -> `envoy/envoy.yaml`, and every
`envoy/variants/<name>.cascade.yaml` -> `envoy/variants/<name>.envoy.yaml` (fallback chains,
backend canary, shadow sampling, the two classifier-deployment variants, a hosted-API tier).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from extproc.config.snapshot import load_snapshot
from extproc.gateway.render import render_yaml
from tests.e2e.harness import ENVOY

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "envoy"


def pairs() -> list[tuple[Path, Path]]:
    found = [(ENVOY_DIR / "cascade.yaml", ENVOY_DIR / "envoy.yaml")]
    for source in sorted((ENVOY_DIR / "variants").glob("*.cascade.yaml")):
        found.append((source, source.with_name(source.name.replace(".cascade.", ".envoy."))))
    return found


PAIRS = pairs()
IDS = [source.name.removesuffix(".yaml") for source, _ in PAIRS]


def test_every_variant_is_present() -> None:
    names = {source.name for source, _ in PAIRS}
    assert {
        "cascade.yaml",
        "canary-and-shadow.cascade.yaml",
        "classifier-deployments.cascade.yaml",
        "classifier-endpoints.cascade.yaml",
        "hosted-tier.cascade.yaml",
        "three-tiers.cascade.yaml",
        "confidence-gate.cascade.yaml",
    } <= names


@pytest.mark.parametrize(("source", "rendered"), PAIRS, ids=IDS)
def test_shipped_envoy_config_is_rerendered_unchanged(source: Path, rendered: Path) -> None:
    snapshot = load_snapshot(source)
    assert rendered.exists() and render_yaml(snapshot) == rendered.read_text(), (
        f"{rendered.relative_to(ROOT)} is stale: cascade render envoy --config "
        f"{source.relative_to(ROOT)} -o {rendered.relative_to(ROOT)}"
    )


@pytest.mark.parametrize(("source", "rendered"), PAIRS, ids=IDS)
def test_shipped_envoy_config_validates(source: Path, rendered: Path) -> None:
    # Credentials from environment variables (hosted-tier): Envoy refuses to start without them.
    secrets = yaml.safe_load(rendered.read_text())["static_resources"].get("secrets", [])
    names = [s["generic_secret"]["secret"].get("environment_variable") for s in secrets]
    env = {**os.environ, **{name: "Bearer test-only" for name in names if name}}
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(rendered)],
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]


def test_fallback_pieces_are_in_the_default_config() -> None:
    document = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    clusters = {c["name"]: c for c in document["static_resources"]["clusters"]}
    aggregate = clusters["tier_strong_fallback"]
    assert aggregate["cluster_type"]["typed_config"]["clusters"] == ["tier_strong", "tier_weak"]
    options = aggregate["typed_extension_protocol_options"]
    (protocol,) = options.values()
    upstream = protocol["http_filters"][0]["typed_config"]
    assert upstream["grpc_service"]["initial_metadata"] == [
        {"key": "x-cascade-role", "value": "upstream"}
    ]
    assert "xds.upstream_host_metadata" in upstream["request_attributes"]
    assert clusters["tier_strong"]["outlier_detection"]["max_ejection_percent"] == 100
    for name in ("tier_strong", "tier_strong_fallback"):
        (default, _) = clusters[name]["circuit_breakers"]["thresholds"]
        assert default["retry_budget"]["min_retry_concurrency"] == 1000
        assert "max_retries" not in default  # the budget replaces the fixed breaker
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = {
        r["name"]: r for r in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    }
    policy = routes["tier_strong"]["route"]["retry_policy"]
    assert policy["retriable_status_codes"] == [429, 503]
    assert policy["num_retries"] == 2
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert policy["rate_limited_retry_back_off"]["reset_headers"][0]["name"] == "retry-after"
    assert "retry_priority" not in routes["tier_weak"]["route"]["retry_policy"]


def test_ipv6_backends_and_listeners_validate(tmp_path: Path) -> None:
    """`[::1]:port` in the cascade config renders as an address Envoy 1.40 accepts."""
    from extproc.config.snapshot import compile_config

    snapshot = compile_config(
        """
tiers:
  - {name: weak, model: small, backends: [{address: "[::1]:18081"}]}
  - {name: strong, model: big, fallback: weak, backends: [{address: "[::1]:18082"}]}
classifier: v1
classifiers: {v1: {default: weak}}
envoy: {listen: "[::1]:10000", admin: "[::1]:9901", ext_proc: ["[::1]:50051"]}
"""
    )
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(render_yaml(snapshot))
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
