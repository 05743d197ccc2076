"""The smallest client of Prometheus's HTTP API the canary rollout needs: instant queries
that return one number (the worst, when a query returns one sample per label set)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class PrometheusError(Exception):
    """Prometheus could not answer (network, HTTP status, or a query error)."""


class Prometheus:
    """The smallest client of Prometheus's HTTP API: instant queries returning one number."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The value of an instant query; None when it returns no sample (or NaN)."""
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as reply:
                document = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise PrometheusError(f"HTTP {exc.code} for {promql!r}: {detail}") from exc
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"{self.base_url}: {exc}") from exc
        if document.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {document.get('error')}")
        return _number(document.get("data", {}))


def _number(data: dict[str, Any]) -> float | None:
    kind, result = data.get("resultType"), data.get("result")
    values: list[Any] = []
    if kind == "scalar" and isinstance(result, list):
        values = [result]
    elif kind == "vector" and isinstance(result, list):
        values = [item.get("value") for item in result if isinstance(item, dict)]
    numbers = []
    for value in values:
        try:
            number = float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if not math.isnan(number):
            numbers.append(number)
    # A query meant to give one number may give one per label set: judge the worst.
    return max(numbers) if numbers else None
