"""Envoy's `HeaderMap` as a plain dict."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2


def header_map(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    """Lower-cased names; Envoy sends values in `raw_value` (bytes), older configs in `value`."""
    result: dict[str, str] = {}
    for header in header_map.headers:
        raw = header.raw_value
        result[header.key.lower()] = raw.decode("utf-8", "replace") if raw else header.value
    return result
