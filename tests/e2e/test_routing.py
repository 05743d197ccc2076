"""Tier routing through the real Envoy binary, decided by `cascade serve` over real gRPC."""

from __future__ import annotations

import json

from tests.e2e.harness import Gateway, stream_events


def test_weak_prompt_reaches_weak(gateway: Gateway) -> None:
    reply = gateway.chat("what is a list comprehension?")
    assert reply.status == 200
    assert reply.headers["x-mock-backend"] == "weak"
    assert reply.headers["x-cascade-served-tier"] == "weak"
    assert reply.headers["x-cascade-served-cluster"] == "tier_weak"
    assert reply.headers["x-cascade-classifier"] == "v7"


def test_strong_prompts_reach_strong_in_three_languages(gateway: Gateway) -> None:
    for text in ("please refactor this module", "이 모듈을 리팩터링 해줘", "帮我重构这个函数"):
        reply = gateway.chat(text)
        assert reply.status == 200, reply.body
        assert reply.headers["x-mock-backend"] == "strong", text
        assert reply.headers["x-cascade-served-tier"] == "strong"


def test_long_and_many_message_prompts_reach_strong(gateway: Gateway) -> None:
    assert gateway.chat("x" * 501).headers["x-mock-backend"] == "strong"
    assert gateway.chat("x" * 500).headers["x-mock-backend"] == "weak"
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}] * 6}).encode()
    reply = gateway.request(
        "POST", "/v1/chat/completions", body, {"content-type": "application/json"}
    )
    assert reply.headers["x-mock-backend"] == "strong"


def test_spoofed_tier_header_is_ignored(gateway: Gateway) -> None:
    weak = gateway.backends["weak"]
    weak.clear_requests()
    reply = gateway.chat(
        "hi", headers={"x-cascade-tier": "strong", "x-cascade-reason": "forged", "x-cascade-x": "1"}
    )
    assert reply.headers["x-mock-backend"] == "weak"
    seen = weak.requests[-1].headers
    assert seen["x-cascade-tier"] == "weak"
    assert seen["x-cascade-reason"] == "default"
    assert "x-cascade-x" not in seen


def test_get_models_passes_to_default_tier(gateway: Gateway) -> None:
    reply = gateway.request("GET", "/v1/models")
    assert reply.status == 200
    assert reply.headers["x-mock-backend"] == "weak"
    assert reply.json()["object"] == "list"


def test_invalid_json_gets_openai_400_without_upstream_call(gateway: Gateway) -> None:
    before = {name: len(b.requests) for name, b in gateway.backends.items()}
    reply = gateway.request(
        "POST", "/v1/chat/completions", b"{not json", {"content-type": "application/json"}
    )
    assert reply.status == 400
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]
    assert {name: len(b.requests) for name, b in gateway.backends.items()} == before


def test_model_rewrite_reaches_backend_with_matching_content_length(gateway: Gateway) -> None:
    strong = gateway.backends["strong"]
    strong.clear_requests()
    reply = gateway.chat("optimize this loop")
    assert reply.status == 200
    seen = strong.requests[-1]
    assert seen.model == "glm-5"
    assert seen.content_length == seen.body_length
    assert reply.headers["x-mock-model"] == "glm-5"
    assert gateway.chat("hello").headers["x-mock-model"] == "qwen3-4b"


def test_sse_streams_through_incrementally(gateway: Gateway) -> None:
    body = json.dumps(
        {
            "model": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "debug this"}],
        }
    ).encode()
    arrivals = list(stream_events(gateway.port, body))
    text = b"".join(chunk for _, chunk in arrivals)
    assert text.rstrip().endswith(b"data: [DONE]")
    assert b'"usage"' in text
    # the backend waits 150 ms between events: the first must arrive long before the last
    assert len(arrivals) >= 3
    assert arrivals[-1][0] - arrivals[0][0] > 0.3


def test_two_megabyte_body_is_classified(gateway: Gateway) -> None:
    reply = gateway.chat("y" * (2 * 1024 * 1024))
    assert reply.status == 200
    assert reply.headers["x-mock-backend"] == "strong"
    assert gateway.backends["strong"].requests[-1].body_length > 2 * 1024 * 1024
