"""Packages that overwrite each other's files were installed in the right order."""

from __future__ import annotations

import sys
from pathlib import Path


def test_otlp_protos_are_opentelemetry_protos_not_xds_copies() -> None:
    from opentelemetry.proto.common.v1 import common_pb2

    assert hasattr(common_pb2, "InstrumentationScope")
    # and Envoy's API still imports
    from envoy.service.ext_proc.v3 import external_processor_pb2

    assert external_processor_pb2.ProcessingRequest.DESCRIPTOR is not None


def test_envoy_binary_is_installed_beside_python() -> None:
    assert (Path(sys.executable).parent / "envoy").exists()
