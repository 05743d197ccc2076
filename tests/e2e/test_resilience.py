"""Envoy does the resilience: retries on 429/503, strong -> weak fallback with weak's model,
outlier ejection of a dead strong tier. Real Envoy, mock backends with scripted failures.

The tests share one stack and run in file order: the last one leaves strong ejected.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Gateway, wait_for

OVERRIDES = """
envoy:
  outlier_detection: {consecutive_5xx: 4, interval_ms: 1000, base_ejection_ms: 60000}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("resilience"), OVERRIDES)
    try:
        yield gateway
    except BaseException:
        print(gateway.logs())
        raise
    finally:
        gateway.close()


@pytest.fixture(autouse=True)
def clean(stack: Gateway) -> None:
    for backend in stack.backends.values():
        backend.reset()


def test_503_then_200_is_retried(stack: Gateway) -> None:
    reply = stack.chat("hello", headers={"x-mock-fail": "503", "x-mock-fail-attempts": "1"})
    assert reply.status == 200, reply.body
    assert reply.headers["x-mock-backend"] == "weak"
    assert reply.headers["x-mock-attempt"] == "2"
    assert [r.status for r in stack.backends["weak"].requests] == [503, 200]


def test_429_with_retry_after_waits_at_least_that_long(stack: Gateway) -> None:
    started = time.monotonic()
    reply = stack.chat("hello", headers={"x-mock-fail": "429:1", "x-mock-fail-attempts": "1"})
    elapsed = time.monotonic() - started
    assert reply.status == 200, reply.body
    assert reply.headers["x-mock-attempt"] == "2"
    first, second = stack.backends["weak"].requests
    assert first.status == 429
    assert second.monotonic - first.monotonic >= 1.0
    assert elapsed >= 1.0
    # without Retry-After the exponential back-off (100 ms base, jittered) applies instead of
    # the 1 s wait: measured between the two attempts as the backend saw them
    stack.backends["weak"].clear_requests()
    reply = stack.chat("hello", headers={"x-mock-fail": "429", "x-mock-fail-attempts": "1"})
    assert reply.status == 200
    first, second = stack.backends["weak"].requests
    assert second.monotonic - first.monotonic < 0.9


def test_retries_are_bounded(stack: Gateway) -> None:
    reply = stack.chat("hello", headers={"x-mock-fail": "503"})
    assert reply.status == 503
    assert len(stack.backends["weak"].requests) == 3  # num_retries 2
    # 3 consecutive 5xx stay under the ejection threshold (4); a success resets the count.
    # (An ejected weak tier would also stop being a fallback target: docs/resilience.md.)
    assert stack.chat("hello").status == 200


def test_strong_503_falls_back_to_weak_with_weak_model(stack: Gateway) -> None:
    strong, weak = stack.backends["strong"], stack.backends["weak"]
    strong.script(["503", "503", "503"])
    reply = stack.chat("please refactor this module")
    assert reply.status == 200, reply.body
    assert reply.headers["x-cascade-tier"] == "strong"  # decided
    assert reply.headers["x-cascade-served-tier"] == "weak"  # served
    assert reply.headers["x-cascade-served-model"] == "qwen3-4b"
    assert reply.headers["x-mock-backend"] == "weak"
    assert [r.model for r in strong.requests] == ["glm-5"]
    (seen,) = weak.requests
    assert seen.model == "qwen3-4b"  # rewritten per attempt by the upstream ext_proc
    assert seen.content_length == seen.body_length
    assert seen.attempt == 2
    # the server counted it
    wait_for(lambda: "fallback strong -> weak" in stack.logs(), 5, "the fallback log line")


def test_both_tiers_failing_ends_after_three_attempts(stack: Gateway) -> None:
    """strong, weak, then strong again (the retry priority starts over once every tier was
    tried). The third attempt replays the original body under headers that attempt 2's model
    rewrite changed: the upstream role must correct content-length or the attempt hangs."""
    started = time.monotonic()
    reply = stack.chat("please refactor this module", headers={"x-mock-fail": "503"})
    assert reply.status == 503
    assert time.monotonic() - started < 5
    attempts = sorted(
        (r.attempt, name, r.model, r.content_length == r.body_length)
        for name in ("weak", "strong")
        for r in stack.backends[name].requests
    )
    assert attempts == [
        (1, "strong", "glm-5", True),
        (2, "weak", "qwen3-4b", True),
        (3, "strong", "glm-5", True),
    ]


def test_strong_429_falls_back_after_retry_after(stack: Gateway) -> None:
    stack.backends["strong"].script([], always="429:1")
    started = time.monotonic()
    reply = stack.chat("please refactor this module")
    assert reply.status == 200
    assert reply.headers["x-cascade-served-tier"] == "weak"
    assert time.monotonic() - started >= 1.0
    stack.backends["strong"].reset()
    # strong healthy again: served by strong, model untouched
    reply = stack.chat("please refactor this module")
    assert reply.headers["x-cascade-served-tier"] == "strong"
    assert reply.headers["x-cascade-served-model"] == "glm-5"


def test_strong_port_closed_falls_back_then_outlier_ejection_skips_it(stack: Gateway) -> None:
    strong, weak = stack.backends["strong"], stack.backends["weak"]
    stack.loop.run(strong.stop())  # a spot interruption: connection refused
    try:
        for _ in range(4):  # 4 consecutive connect failures eject strong
            reply = stack.chat("please refactor this module")
            assert reply.status == 200, reply.body
            assert reply.headers["x-cascade-served-tier"] == "weak"
            assert weak.requests[-1].model == "qwen3-4b"
            assert weak.requests[-1].attempt == 2
        wait_for(
            lambda: "failed_outlier_check" in stack.admin("/clusters").body.decode(),
            5,
            "strong ejected",
        )
    finally:
        stack.loop.run(strong.start())
    # strong is back, but ejected: the first attempt goes straight to weak
    weak.clear_requests()
    reply = stack.chat("please refactor this module")
    assert reply.status == 200
    assert reply.headers["x-cascade-served-tier"] == "weak"
    assert weak.requests[-1].attempt == 1
    assert strong.requests == []
