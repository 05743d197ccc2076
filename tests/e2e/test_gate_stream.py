"""The confidence gate on streamed answers (and non-streamed ones in the same mode), through
the real Envoy: the start of the weak stream is held and judged; a failing prefix is retried
on the next tier before a byte reaches the client; a passing stream arrives byte-identical and
still incremental; past the hold the stream is never cut.

Tiers weak (gate, hold 4 tokens / 2 s) -> strong. The mock streams one content event per word
piece, 50 ms apart.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import Gateway, reset_backends, serving

DELAY_MS = 50
HOLD_TOKENS = 4
REFUSAL = "I'm sorry, but I can't help with that request, it is outside what I may do here."
WORDS = " ".join(f"word{i}" for i in range(40))


def edit(document: dict[str, Any], gateway: Gateway) -> None:
    document["tiers"][0]["gate"] = {"hold_tokens": HOLD_TOKENS, "hold_ms": 2000}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("gate_stream"), stream_delay_ms=DELAY_MS, edit_config=edit
    )
    yield from serving(gateway)


@pytest.fixture(autouse=True)
def clean(stack: Gateway) -> None:
    reset_backends(stack)


def body(text: str = "hello", model: str = "auto") -> bytes:
    return json.dumps(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
    ).encode()


def stream(
    port: int, data: bytes, headers: dict[str, str]
) -> tuple[dict[str, str], list[tuple[float, bytes]]]:
    """POST and read the SSE answer: (headers, [(seconds since start, chunk), ...])."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.monotonic()
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=data,
            headers={"content-type": "application/json", **headers},
        )
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        found = {k.lower(): v for k, v in reply.getheaders()}
        chunks = []
        for _ in range(10_000):
            chunk = reply.read1(65536)
            if not chunk:
                break
            chunks.append((time.monotonic() - started, chunk))
        return found, chunks
    finally:
        conn.close()


def events(raw: bytes) -> list[Any]:
    text = raw.decode()
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    return [json.loads(part[6:]) for part in text.split("\n\n") if part.startswith("data: {")]


def normalized(raw: bytes) -> bytes:
    """The answer without what differs per call (completion id, creation time)."""
    raw = re.sub(rb'"id":"chatcmpl-mock-[a-z]+-\d+"', b'"id":"X"', raw)
    return re.sub(rb'"created":\d+', b'"created":0', raw)


def test_a_failing_prefix_is_escalated_before_any_byte(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": REFUSAL + " " + WORDS}])
    headers, chunks = stream(stack.port, body(), {"x-mock-stream-chunks": "30"})
    assert headers["x-mock-backend"] == "strong"
    assert headers["x-cascade-escalated"] == "weak->strong"
    assert headers["x-cascade-confidence"] == "0.500"
    answer = events(b"".join(c for _, c in chunks))
    assert {e["model"] for e in answer} == {"glm-5"}
    assert all(e["id"].startswith("chatcmpl-mock-strong-") for e in answer)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in answer if e["choices"])
    assert text.startswith("[strong]") and "sorry" not in text
    (weak,) = stack.backends["weak"].requests
    assert weak.stream and weak.model == "qwen3-4b"
    (strong,) = stack.backends["strong"].requests
    assert strong.model == "glm-5" and strong.stream
    assert strong.content_length == strong.body_length


def test_a_passing_stream_is_byte_identical_and_incremental(stack: Gateway) -> None:
    script = {"content": WORDS}
    headers = {"x-mock-stream-chunks": "40"}
    stack.backends["weak"].script([script])
    found, chunks = stream(stack.port, body(), headers)
    assert found["x-mock-backend"] == "weak"
    assert found["x-cascade-confidence"] == "1.000"
    assert "x-cascade-escalated" not in found
    # the same request (with the model the gateway writes) straight to the backend: same bytes
    stack.backends["weak"].script([script])
    _, direct = stream(
        stack.backends["weak"].port, body(model="qwen3-4b"), {**headers, "x-cascade-tier": "weak"}
    )
    assert normalized(b"".join(c for _, c in chunks)) == normalized(b"".join(c for _, c in direct))
    # released after the hold (4 tokens), then incremental: the rest spread over ~36 x 50 ms
    first, last = chunks[0][0], chunks[-1][0]
    assert len(chunks) >= 20
    assert last - first >= 0.5 * (40 - HOLD_TOKENS) * DELAY_MS / 1000


def test_past_the_hold_the_stream_is_never_cut(stack: Gateway) -> None:
    late = WORDS[:60] + " I'm not sure, and I can't help with that."
    stack.backends["weak"].script([{"content": late, "finish_reason": "length"}])
    found, chunks = stream(stack.port, body(), {"x-mock-stream-chunks": "20"})
    assert found["x-mock-backend"] == "weak"  # judged on the first tokens only
    answer = events(b"".join(c for _, c in chunks))
    assert answer[-1]["choices"][0]["finish_reason"] == "length"
    assert len(stack.backends["strong"].requests) == 0


def test_a_short_stream_is_judged_whole(stack: Gateway) -> None:
    """The whole answer fits in the hold: finish_reason counts."""
    stack.backends["weak"].script([{"content": "ok then", "finish_reason": "length"}])
    found, chunks = stream(stack.port, body(), {"x-mock-stream-chunks": "2"})
    assert found["x-mock-backend"] == "strong"
    assert found["x-cascade-escalated"] == "weak->strong"
    events(b"".join(c for _, c in chunks))


def test_non_streamed_answers_in_the_same_mode(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": REFUSAL}])
    reply = stack.chat("hello")
    assert reply.headers["x-mock-backend"] == "strong"
    assert reply.headers["x-cascade-escalated"] == "weak->strong"
    assert reply.json()["model"] == "glm-5"
    passing = stack.chat("hello")
    assert passing.headers["x-mock-backend"] == "weak"
    assert passing.headers["x-cascade-confidence"] == "1.000"


def edit_timed(document: dict[str, Any], gateway: Gateway) -> None:
    document["tiers"][0]["gate"] = {"hold_tokens": 1000, "hold_ms": 300}


@pytest.fixture(scope="module")
def timed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """hold_ms decides: 1000 tokens would never come in time."""
    gateway = Gateway(
        tmp_path_factory.mktemp("gate_timed"), stream_delay_ms=DELAY_MS, edit_config=edit_timed
    )
    yield from serving(gateway)


def test_the_hold_ends_at_hold_ms(timed_stack: Gateway) -> None:
    timed_stack.backends["weak"].script([{"content": WORDS}])
    found, chunks = stream(timed_stack.port, body(), {"x-mock-stream-chunks": "40"})
    assert found["x-mock-backend"] == "weak"
    assert found["x-cascade-confidence"] == "1.000"  # judged on the prefix at 300 ms
    first, last = chunks[0][0], chunks[-1][0]
    assert last - first >= 1.0  # released long before the 2 s stream ended
    events(b"".join(c for _, c in chunks))


def test_a_stall_during_the_hold_fails_open(timed_stack: Gateway) -> None:
    """No token for longer than the held message may wait: Envoy releases it unjudged."""
    timed_stack.backends["weak"].script([{"content": REFUSAL}])
    found, chunks = stream(
        timed_stack.port, body(), {"x-mock-stream-chunks": "2", "x-mock-stream-delay-ms": "2500"}
    )
    assert found["x-mock-backend"] == "weak"
    assert "x-cascade-confidence" not in found
    answer = events(b"".join(c for _, c in chunks))
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in answer) == REFUSAL
