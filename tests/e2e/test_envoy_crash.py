"""The 2 MB fallback crash (docs/envoy.md): Envoy 1.39/1.40 segfaulted when the write buffer of
its HTTP/2 connection to the classifier passed its high watermark while the upstream ext_proc of
a fallback attempt waited for a backend connection. The rendered bootstrap turns ext_proc
side-stream flow control off; these tests run the trigger against the real Envoy.

Every attempt to a tier backend opens a new connection here (`max_requests_per_connection: 1`,
a test-only edit), so each upstream ext_proc runs while its attempt waits in the pool: the
crash window, hit in 37 of 50 rounds without the fix.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.gateway.common import EXT_PROC_CLUSTER, SIDE_STREAM_FLOW_CONTROL
from tests.e2e.harness import Gateway, Response, serving

ROUNDS = 50
SMALL = 4  # strong requests in flight beside the big one
BIG = 2_000_000
#: strong's 503 rounds must not eject it (outlier detection would send later rounds to weak)
OVERRIDES = "envoy: {outlier_detection: {enabled: false}}"
#: the test's own bound on wall time (2 shared cores); ~20-30 s measured
SECONDS = 90


def cold_pools(document: dict[str, Any]) -> None:
    """Every attempt to a tier backend waits for a new connection."""
    for cluster in document["static_resources"]["clusters"]:
        name = cluster["name"]
        if name.startswith("tier_") and not name.endswith("_fallback"):
            cluster["common_http_protocol_options"] = {"max_requests_per_connection": 1}


def chat_body(size: int = 0) -> bytes:
    document = {"model": "auto", "messages": [{"role": "user", "content": "please refactor this"}]}
    if size:
        padding = size - len(json.dumps(document)) - 1
        document["messages"][0]["content"] += " " + "x" * padding
    return json.dumps(document).encode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # the harness's config: strong has `fallback: weak`, rewrite_model on (upstream role BUFFERED)
    gateway = Gateway(tmp_path_factory.mktemp("crash"), OVERRIDES, edit_envoy=cold_pools)
    yield from serving(gateway)


def post(gateway: Gateway, body: bytes, headers: dict[str, str]) -> Response:
    return gateway.request(
        "POST",
        "/v1/chat/completions",
        body,
        {"content-type": "application/json", **headers},
        timeout=20,
    )


def run_rounds(gateway: Gateway, bodies: list[bytes], rounds: int, started: float) -> int:
    """`rounds` rounds of `bodies` sent at once on fresh connections; odd rounds make strong
    answer 503 (served by weak through the fallback and its per-attempt model rewrite)."""
    answered = 0
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        for n in range(rounds):
            assert time.monotonic() - started < SECONDS, f"too slow: {n} rounds done"
            fail_strong = n % 2 == 1
            headers = {"x-mock-delay-ms": "50"}
            if fail_strong:
                headers["x-mock-fail-strong"] = "503"
            futures = [pool.submit(post, gateway, body, headers) for body in bodies]
            answers = [future.result(timeout=30) for future in futures]
            assert gateway.envoy is not None
            assert gateway.envoy.poll() is None, f"Envoy died in round {n}"
            for answer in answers:
                # under max_request_bytes (16 MiB): never 413 here
                assert answer.status == 200, (n, answer.status, answer.body[:200])
                assert answer.headers["x-cascade-tier"] == "strong"
                served = "weak" if fail_strong else "strong"
                assert answer.headers["x-cascade-served-tier"] == served
                # what the backend received: the model of the tier that served
                assert answer.headers["x-mock-model"] == ("qwen3-4b" if fail_strong else "glm-5")
                answered += 1
    return answered


def test_flow_control_off_and_classifier_buffer_raised(stack: Gateway) -> None:
    runtime = stack.admin("/runtime").json()["entries"][SIDE_STREAM_FLOW_CONTROL]
    assert runtime["final_value"] == "false"
    clusters = stack.admin("/config_dump?resource=static_clusters").json()
    (ext_proc,) = [
        c["cluster"] for c in clusters["configs"] if c["cluster"]["name"] == EXT_PROC_CLUSTER
    ]
    assert ext_proc["per_connection_buffer_limit_bytes"] == 16 * 1024 * 1024 + 1024 * 1024


def test_2mb_body_beside_pending_fallback_attempts_does_not_crash_envoy(stack: Gateway) -> None:
    started = time.monotonic()
    bodies = [chat_body()] * SMALL + [chat_body(BIG)]
    assert run_rounds(stack, bodies, ROUNDS, started) == ROUNDS * len(bodies)


def test_concurrent_sub_mebibyte_bodies_do_not_crash_envoy(stack: Gateway) -> None:
    """The watermark is the classifier connection's: 8 x 600 KB (each under 1 MiB) crashed
    20 of 20 rounds unfixed, so capping single bodies is no fix."""
    started = time.monotonic()
    bodies = [chat_body(600_000)] * 8
    assert run_rounds(stack, bodies, ROUNDS // 2, started) == ROUNDS // 2 * len(bodies)


def test_unfixed_render_is_the_one_that_crashes(tmp_path: Path) -> None:
    """Control: the same trigger with both changes undone (Envoy's defaults) must crash within
    a few rounds; if it stops crashing, this Envoy no longer has the bug (or the trigger drifted)
    and the docs need updating."""

    def unfixed(document: dict[str, Any]) -> None:
        cold_pools(document)
        document["layered_runtime"]["layers"][0]["static_layer"] = {}
        for cluster in document["static_resources"]["clusters"]:
            cluster.pop("per_connection_buffer_limit_bytes", None)

    gateway = Gateway(tmp_path, OVERRIDES, edit_envoy=unfixed)
    try:
        started = time.monotonic()
        bodies = [chat_body()] * SMALL + [chat_body(BIG)]
        with cf.ThreadPoolExecutor(len(bodies)) as pool:
            for _ in range(20):
                if time.monotonic() - started > SECONDS:
                    break
                futures = [
                    pool.submit(post, gateway, body, {"x-mock-delay-ms": "50"}) for body in bodies
                ]
                cf.wait(futures, timeout=30)
                assert gateway.envoy is not None
                if gateway.envoy.poll() is not None:
                    break
        assert gateway.envoy is not None
        assert gateway.envoy.poll() is not None, "the unfixed config survived 20 rounds"
        assert "Segmentation fault" in (tmp_path / "envoy.log").read_text(errors="replace")
    finally:
        gateway.close()
