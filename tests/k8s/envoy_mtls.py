"""k8s/overlays/envoy-mtls/envoy.yaml: the envoy overlay's `cascade render envoy` output with the
transport socket of extproc-transport-socket.yaml on the ext_proc cluster.

`cascade render envoy` has no TLS option, so this builds the file, and tests/k8s checks that the
committed one is what it builds. After changing either source:
    python -m tests.k8s.envoy_mtls
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from extproc.config.snapshot import compile_config
from extproc.gateway.common import EXT_PROC_CLUSTER
from extproc.gateway.render import render_yaml

ROOT = Path(__file__).resolve().parents[2]
ENVOY_OVERLAY = ROOT / "k8s" / "overlays" / "envoy"
OVERLAY = ROOT / "k8s" / "overlays" / "envoy-mtls"
SOCKET = OVERLAY / "extproc-transport-socket.yaml"
OUTPUT = OVERLAY / "envoy.yaml"
HEADER = (
    "# Built by `python -m tests.k8s.envoy_mtls`: `cascade render envoy` of\n"
    "# k8s/overlays/envoy/cascade.yaml plus the transport socket in extproc-transport-socket.yaml\n"
    "# on the ext_proc cluster. Do not edit by hand; change those two files and rebuild.\n"
)


def transport_socket() -> dict[str, Any]:
    socket: dict[str, Any] = yaml.safe_load(SOCKET.read_text())["transport_socket"]
    return socket


def build() -> str:
    source = (ENVOY_OVERLAY / "cascade.yaml").read_text()
    rendered = render_yaml(compile_config(source, "k8s/overlays/envoy/cascade.yaml"))
    bootstrap = yaml.safe_load(rendered)
    [cluster] = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == EXT_PROC_CLUSTER
    ]
    cluster["transport_socket"] = transport_socket()
    return HEADER + yaml.safe_dump(bootstrap, sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    OUTPUT.write_text(build())
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
