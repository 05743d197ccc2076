"""The response cache through the real Envoy: a repeat is answered by the server (the backend sees
nothing), as JSON or as an SSE stream the official `openai` SDK reads; tenants never share."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.harness import Gateway, wait_for

CACHE = """
cache:
  identity_headers: [x-user-id]
  semantic: {enabled: true, threshold: 0.9}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    stack = Gateway(tmp_path_factory.mktemp("cache"), CACHE, stream_delay_ms=5)
    try:
        yield stack
    finally:
        stack.close()


def backend_calls(gateway: Gateway) -> int:
    return sum(len(backend.requests) for backend in gateway.backends.values())


def cached(gateway: Gateway, result: str) -> float:
    """`cascade_cache_lookups_total{result=...}` of the classifier."""
    for line in gateway.metrics().splitlines():
        if line.startswith(f'cascade_cache_lookups_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def stored(gateway: Gateway) -> float:
    for line in gateway.metrics().splitlines():
        if line.startswith('cascade_cache_stores_total{result="stored"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_repeat_is_answered_from_the_cache(gateway: Gateway) -> None:
    user = {"x-user-id": "alice"}
    before = stored(gateway)
    first = gateway.chat("What is the capital of France?", headers=user, temperature=0)
    assert first.status == 200
    assert first.headers["x-cascade-cache"] == "miss"
    wait_for(lambda: stored(gateway) > before, 10, "the answer to be stored")
    calls = backend_calls(gateway)
    second = gateway.chat("What is the capital of France?", headers=user, temperature=0)
    assert second.status == 200, second.body
    assert second.headers["x-cascade-cache"] == "hit"
    assert second.headers["x-cascade-cache-match"] == "exact"
    assert int(second.headers["age"]) >= 0
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert backend_calls(gateway) == calls  # the backend saw no request


def test_another_tenant_never_gets_the_answer(gateway: Gateway) -> None:
    before = stored(gateway)
    gateway.chat("Name a prime above 100.", headers={"x-user-id": "alice"}, temperature=0)
    wait_for(lambda: stored(gateway) > before, 10, "the answer to be stored")
    calls = backend_calls(gateway)
    other = gateway.chat("Name a prime above 100.", headers={"x-user-id": "bob"}, temperature=0)
    assert other.headers["x-cascade-cache"] == "miss"
    assert backend_calls(gateway) == calls + 1
    anonymous = gateway.chat("Name a prime above 100.", temperature=0)
    assert anonymous.headers["x-cascade-cache"] == "skip"  # no identity: no cache


def test_no_store_bypasses_and_a_spoofed_verdict_is_ignored(gateway: Gateway) -> None:
    headers = {"x-user-id": "carol", "cache-control": "no-store", "x-cascade-cache": "hit"}
    reply = gateway.chat("Say hello.", headers=headers, temperature=0)
    assert reply.status == 200
    assert reply.headers["x-cascade-cache"] == "bypass"


def test_a_paraphrase_hits_and_a_changed_number_does_not(gateway: Gateway) -> None:
    user = {"x-user-id": "dave"}
    question = "A farmer has 17 sheep and buys 5 more. How many sheep does the farmer have now?"
    before = stored(gateway)
    gateway.chat(question, headers=user, temperature=0)
    wait_for(lambda: stored(gateway) > before, 10, "the answer to be stored")
    reworded = "A farmer has 17 sheep and buys 5 more. How many sheep does the farmer have now ?"
    semantic = gateway.chat(reworded, headers=user, temperature=0)
    assert semantic.headers["x-cascade-cache"] == "hit"
    assert semantic.headers["x-cascade-cache-match"] == "semantic"
    changed = question.replace("17", "71")
    assert gateway.chat(changed, headers=user, temperature=0).headers["x-cascade-cache"] == "miss"
    negated = question.replace("buys", "does not buy")
    assert gateway.chat(negated, headers=user, temperature=0).headers["x-cascade-cache"] == "miss"


def test_a_streamed_repeat_is_a_valid_sse_replay_for_the_sdk(gateway: Gateway) -> None:
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{gateway.port}/v1",
        api_key="unused",
        default_headers={"x-user-id": "erin"},
        max_retries=0,
    )
    messages = [{"role": "user", "content": "Write one sentence about rivers."}]
    before = stored(gateway)
    live = client.chat.completions.create(
        model="auto",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    original = "".join(chunk.choices[0].delta.content or "" for chunk in live if chunk.choices)
    wait_for(lambda: stored(gateway) > before, 10, "the streamed answer to be stored")
    hits = cached(gateway, "hit_exact")
    calls = backend_calls(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=messages,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    assert raw.headers["x-cascade-cache"] == "hit"
    chunks = list(raw.parse())
    replayed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert replayed == original
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert backend_calls(gateway) == calls
    assert cached(gateway, "hit_exact") == hits + 1
    # the same question, not streamed: the stored answer as one JSON document
    plain = gateway.chat(
        "Write one sentence about rivers.", headers={"x-user-id": "erin"}, temperature=0
    )
    assert plain.headers["x-cascade-cache"] == "hit"
    assert json.loads(plain.body)["choices"][0]["message"]["content"] == original
