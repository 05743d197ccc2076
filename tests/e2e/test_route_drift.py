"""A live reload that adds a tier Envoy does not route: the server keeps deciding with the last
snapshot Envoy can route, counts and logs the mismatch, and reports it as a health condition.

Real Envoy (rendered from the first config, never re-rendered), real `cascade serve`, mock
backends that answer 404 to a model they do not serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.harness import Gateway, serving, wait_for


def _mid_tier(document: dict[str, Any], gateway: Gateway) -> dict[str, Any]:
    """The config with a `mid` tier between weak and strong, and a rule sending `refactor`
    there (the first rule of v7 sends it to strong)."""
    tiers = document["tiers"]
    mid = {
        "name": "mid",
        "model": "mid-model",
        "backends": [{"address": f"127.0.0.1:{gateway.backends['mid'].port}"}],
    }
    document["tiers"] = [tiers[0], mid, tiers[1]]
    rules = document["classifiers"]["v7"]["rules"]
    rules.insert(
        0, {"name": "mid_words", "kind": "keyword", "tier": "mid", "keywords": ["refactor"]}
    )
    return document


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path, extra_backends={"mid": "mid-model"}, strict_models=True)
    yield from serving(gateway)


def routes_status(gateway: Gateway) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{gateway.classifier_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service="cascade.routes"), timeout=10)
        return int(reply.status)


def metric(gateway: Gateway, prefix: str) -> float:
    total = 0.0
    for line in gateway.metrics().splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_reload_adding_a_tier_envoy_cannot_route_keeps_the_routable_snapshot(
    stack: Gateway,
) -> None:
    first = stack.chat("please refactor this module")
    assert (first.status, first.headers["x-mock-backend"]) == (200, "strong")
    assert routes_status(stack) == health_pb2.HealthCheckResponse.SERVING
    assert metric(stack, "cascade_routes_in_sync ") == 1

    original = stack.config_path.read_text()
    document = _mid_tier(yaml.safe_load(original), stack)
    stack.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    log = stack.workdir / "classifier.log"
    wait_for(lambda: "config reloaded" in log.read_text(), 20, "the reload")

    # Envoy has no route for `mid`: the decision must not be taken from the new config
    for _ in range(3):
        reply = stack.chat("please refactor this module")
        assert reply.status == 200, reply.body
        assert reply.headers["x-mock-backend"] == "strong"
        assert reply.headers["x-cascade-served-tier"] == "strong"
    assert not stack.backends["mid"].requests
    assert metric(stack, 'cascade_routes_mismatch_total{outcome="kept"}') >= 3
    assert metric(stack, "cascade_routes_in_sync ") == 0
    assert routes_status(stack) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "do not match the tiers Envoy routes" in log.read_text()

    # the file back as Envoy knows it: in sync again
    stack.config_path.write_text(original)
    wait_for(lambda: log.read_text().count("config reloaded") >= 2, 20, "the second reload")
    assert stack.chat("please refactor this module").headers["x-mock-backend"] == "strong"
    wait_for(
        lambda: routes_status(stack) == health_pb2.HealthCheckResponse.SERVING,
        10,
        "routes in sync",
    )
    assert metric(stack, "cascade_routes_in_sync ") == 1
