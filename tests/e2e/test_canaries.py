"""Canaries and shadow sampling through the real Envoy: a backend canary inside the weak tier
(weighted clusters, sticky per user), weak requests mirrored to strong, and the in-process
classifier canary (v7 / v8 split by a hash of the user id)."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from extproc.config.snapshot import compile_config
from extproc.routing.choice import choose_classifier
from tests.e2e.harness import Gateway, serving, wait_for

REQUESTS = 600
CANARY_WEIGHT = 20  # percent of weak traffic on the canary backend group
MIRROR_PERCENT = 25  # percent of weak requests shadowed to strong
CLASSIFIER_CANARY = 50  # percent of users classified by v8


def edit(document: dict[str, Any], gateway: Gateway) -> None:
    weak = document["tiers"][0]
    weak["backends"] = [
        {
            "address": f"127.0.0.1:{gateway.backends['weak'].port}",
            "name": "stable",
            "weight": 100 - CANARY_WEIGHT,
        },
        {
            "address": f"127.0.0.1:{gateway.backends['weak_canary'].port}",
            "name": "canary",
            "model": "qwen3-4b-v2",
            "weight": CANARY_WEIGHT,
        },
    ]
    weak["mirror"] = {"tier": "strong", "percent": MIRROR_PERCENT}
    v8 = copy.deepcopy(document["classifiers"]["v7"])
    v8["description"] = "v7 under another name, to see the split"
    document["classifiers"]["v8"] = v8
    document["canary"] = {"version": "v8", "weight": CLASSIFIER_CANARY, "key_header": "x-user-id"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("canaries"),
        extra_backends={"weak_canary": "qwen3-4b-v2"},
        edit_config=edit,
    )
    yield from serving(gateway)


def test_backend_canary_split_and_mirror_fraction(stack: Gateway) -> None:
    weak, canary, strong = (stack.backends[n] for n in ("weak", "weak_canary", "strong"))
    for backend in (weak, canary, strong):
        backend.clear_requests()
    request_ids = set()
    started = time.monotonic()
    for index in range(REQUESTS):
        reply = stack.chat("hello", headers={"x-user-id": f"user-{index}"})
        assert reply.status == 200, reply.body
        request_ids.add(reply.headers["x-request-id"])
        assert time.monotonic() - started < 30, "too slow"
    on_canary = len(canary.requests)
    assert on_canary + len(weak.requests) == REQUESTS
    assert abs(100 * on_canary / REQUESTS - CANARY_WEIGHT) <= 6, on_canary
    # the canary group asks for its own model (per-attempt rewrite on its cluster)
    assert {r.model for r in canary.requests} == {"qwen3-4b-v2"}
    assert {r.model for r in weak.requests} == {"qwen3-4b"}

    # shadows arrive asynchronously: Envoy counted each one when it sent it (every original has
    # returned by now), so wait until the strong backend has received that many
    def sent_to_strong() -> int:
        stats = stack.admin("/stats?filter=^cluster\\.tier_strong\\.upstream_rq_total$").body
        return int(stats.decode().rpartition(":")[2].strip() or 0)

    wait_for(lambda: len(strong.requests) >= sent_to_strong() > 0, 10, "the shadow requests")
    shadows = strong.requests
    assert len(shadows) == sent_to_strong()
    assert all(r.headers.get("x-cascade-shadow-of") == "weak" for r in shadows)
    assert abs(100 * len(shadows) / REQUESTS - MIRROR_PERCENT) <= 6, len(shadows)
    # each shadow joins its original by x-request-id, and asks strong for strong's model
    assert {r.headers["x-request-id"] for r in shadows} <= request_ids
    assert {r.model for r in shadows} == {"glm-5"}
    assert all(r.content_length == r.body_length for r in shadows)
    # a shadow is not a fallback
    assert "fallback weak -> strong" not in stack.logs()


def test_backend_canary_is_sticky_per_user(stack: Gateway) -> None:
    for user in range(10):
        served = {
            stack.chat("hello", headers={"x-user-id": f"sticky-{user}"}).headers["x-mock-backend"]
            for _ in range(4)
        }
        assert len(served) == 1, (user, served)


def test_served_model_header_names_the_canary_model(stack: Gateway) -> None:
    models = Counter(
        stack.chat("hello", headers={"x-user-id": f"m-{i}"}).headers["x-cascade-served-model"]
        for i in range(40)
    )
    assert set(models) == {"qwen3-4b", "qwen3-4b-v2"}


def test_classifier_canary_is_sticky_and_matches_the_hash(stack: Gateway) -> None:
    snapshot = compile_config(stack.config_path.read_text())
    versions = Counter()
    for user in range(30):
        key = f"classifier-{user}"
        expected = choose_classifier(snapshot, key).version
        for _ in range(3):
            reply = stack.chat("please refactor this", headers={"x-user-id": key})
            assert reply.headers["x-cascade-classifier"] == expected
            assert reply.headers["x-cascade-served-tier"] == "strong"
        versions[expected] += 1
    assert set(versions) == {"v7", "v8"}
