"""Envoy does the resilience: retries on 429/503, strong -> weak fallback with weak's model,
outlier ejection of a dead strong tier. Real Envoy, mock backends with scripted failures.

The tests share one stack and run in file order: the last one leaves strong ejected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.harness import Gateway, Response, reset_backends, serving, wait_for

#: time to first byte allowed to a streamed attempt (the default is 10 s; short for the test)
STREAM_PER_TRY_MS = 1000
OVERRIDES = f"""
envoy:
  outlier_detection: {{consecutive_5xx: 4, interval_ms: 1000, base_ejection_ms: 60000}}
  retries: {{stream_per_try_timeout_ms: {STREAM_PER_TRY_MS}}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("resilience"), OVERRIDES)
    yield from serving(gateway)


@pytest.fixture(autouse=True)
def clean(stack: Gateway) -> None:
    reset_backends(stack)


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


# -- rate limiting and slowness (part 7): figures in docs/resilience.md ----------------------------

STORM = 200  # requests, all sent at once: every retry waits out its Retry-After at the same time


def storm(stack: Gateway, text: str, headers: dict[str, str]) -> tuple[list[Response], float]:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]}).encode()
    started = time.monotonic()

    def one(_: int) -> Response:
        return stack.request(
            "POST",
            "/v1/chat/completions",
            body,
            {"content-type": "application/json", **headers},
            timeout=30,
        )

    with ThreadPoolExecutor(STORM) as pool:
        replies = list(pool.map(one, range(STORM), timeout=60))
    elapsed = time.monotonic() - started
    assert elapsed < 10
    return replies, elapsed


def retry_stats(stack: Gateway, cluster: str) -> dict[str, int]:
    text = stack.admin(f"/stats?filter=^cluster\\.{cluster}\\.upstream_rq_retry").body.decode()
    return {
        line.split(":")[0].rsplit(".", 1)[1]: int(line.split(":")[1])
        for line in text.splitlines()
        if line.strip()
    }


def test_429_storm_on_strong_is_served_by_weak_after_the_wait(stack: Gateway) -> None:
    """200 strong requests at once, strong answers every one 429 + Retry-After: 1. The old
    fixed breaker (max_retries 100) returned the 429 to 100 of them; Envoy's default budget
    (20 %, at least 3) to 197 (an aggregate cluster counts no active requests of its own)."""
    before = retry_stats(stack, "tier_strong_fallback")
    replies, elapsed = storm(stack, "please refactor this", {"x-mock-fail-strong": "429:1"})
    assert {r.status for r in replies} == {200}
    assert {r.headers["x-cascade-served-tier"] for r in replies} == {"weak"}
    assert {r.headers["x-mock-model"] for r in replies} == {"qwen3-4b"}
    assert {r.headers["x-mock-attempt"] for r in replies} == {"2"}
    assert elapsed >= 1.0  # each waited for the Retry-After
    after = retry_stats(stack, "tier_strong_fallback")
    assert after.get("upstream_rq_retry_overflow", 0) == before.get("upstream_rq_retry_overflow", 0)
    assert len(stack.backends["strong"].requests) == STORM
    print(f"429 storm on strong: {STORM} requests, all 200 from weak in {elapsed:.2f}s")


def test_429_storm_without_fallback_is_served_by_the_same_tier_after_the_wait(
    stack: Gateway,
) -> None:
    """weak has no fallback: each request gets 429 + Retry-After: 1 once, then its retry on
    weak (after the wait) is answered."""
    replies, elapsed = storm(stack, "hello", {"x-mock-fail": "429:1", "x-mock-fail-attempts": "1"})
    assert {r.status for r in replies} == {200}
    assert {r.headers["x-cascade-served-tier"] for r in replies} == {"weak"}
    assert {r.headers["x-mock-attempt"] for r in replies} == {"2"}
    weak = stack.backends["weak"].requests
    assert sorted(r.status for r in weak) == [200] * STORM + [429] * STORM
    assert elapsed >= 1.0
    print(
        f"429 storm on weak: {STORM} requests, all 200 from weak after the wait in {elapsed:.2f}s"
    )


SLOW_MS = 8000  # strong's time to first byte, well above the stream per-try timeout


def test_stalled_strong_stream_falls_back_within_the_per_try_timeout(stack: Gateway) -> None:
    timeout_s = STREAM_PER_TRY_MS / 1000
    stack.backends["strong"].script([], always={"status": 200, "ttfb_ms": SLOW_MS})
    served = []
    for _ in range(3):  # bounded; 3 timeouts stay under the ejection threshold (4)
        started = time.monotonic()
        reply = stack.chat("please refactor this module", stream=True)
        elapsed = time.monotonic() - started
        assert reply.status == 200, reply.body
        assert reply.headers["x-cascade-served-tier"] == "weak"
        assert reply.headers["x-mock-model"] == "qwen3-4b"
        assert b"data: [DONE]" in reply.body
        # the per-try timeout, then weak's whole stream (4 chunks x 150 ms)
        assert timeout_s <= elapsed < timeout_s + 2.5, elapsed
        served.append(elapsed)
    print(f"stalled strong (ttfb {SLOW_MS} ms): served by weak in {[round(s, 2) for s in served]}s")


def test_per_try_timeout_cuts_neither_long_streams_nor_non_streamed_answers(
    stack: Gateway,
) -> None:
    strong = stack.backends["strong"]
    # a stream that lasts longer than the per-try timeout: intact, from strong, one attempt
    reply = stack.chat(
        "please refactor this module", headers={"x-mock-stream-delay-ms": "500"}, stream=True
    )
    assert reply.status == 200
    assert reply.headers["x-cascade-served-tier"] == "strong"
    assert reply.headers["x-mock-attempt"] == "1"
    assert reply.body.count(b"data: ") >= 6
    # a non-streamed answer slower than it (its headers come after the whole generation)
    strong.script([{"status": 200, "ttfb_ms": int(STREAM_PER_TRY_MS * 1.5)}])
    reply = stack.chat("please refactor this module")
    assert reply.status == 200
    assert reply.headers["x-cascade-served-tier"] == "strong"
    assert reply.headers["x-mock-attempt"] == "1"


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
