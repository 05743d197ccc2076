"""The shipped Envoy config is the renderer's output and Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from extproc.config import load_snapshot
from extproc.envoy_render import render_yaml
from tests.e2e.harness import ENVOY

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_envoy_config_is_rerendered_unchanged() -> None:
    snapshot = load_snapshot(ROOT / "envoy" / "cascade.yaml")
    assert render_yaml(snapshot) == (ROOT / "envoy" / "envoy.yaml").read_text(), (
        "envoy/envoy.yaml is stale: cascade render envoy --config envoy/cascade.yaml "
        "-o envoy/envoy.yaml"
    )


def test_shipped_envoy_config_validates() -> None:
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(ROOT / "envoy" / "envoy.yaml")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
