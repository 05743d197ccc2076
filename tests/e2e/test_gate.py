"""The confidence gate through the real Envoy: a held weak answer is judged; a failing one is
retried by Envoy on the next tier; a passing one is released unchanged.

Tiers weak -> mid -> strong; weak and mid have a gate (each escalates to the next tier), the
budget is one escalation per request. Weak's gate has `streams: false`: the cheap path, where
only the gated attempt asks for its response (a mode override); tests/e2e/test_gate_stream.py
covers the default, which holds streams too. A `finance` rule (keyword `invoice`) decides weak without
a gate. Answers are shaped per backend with the mock's script.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import Gateway, Response, reset_backends, serving, wait_for

REFUSAL = "I'm sorry, but I can't help with that request."


def edit(document: dict[str, Any], gateway: Gateway) -> None:
    weak, strong = document["tiers"]
    weak["gate"] = {"streams": False}
    mid = {
        "name": "mid",
        "model": "mid-model",
        "backends": [{"address": f"127.0.0.1:{gateway.backends['mid'].port}"}],
        "gate": {},
    }
    document["tiers"] = [weak, mid, strong]
    rules = document["classifiers"]["v7"]["rules"]
    rules.insert(
        0,
        {
            "name": "finance",
            "kind": "keyword",
            "keywords": ["invoice"],
            "tier": "weak",
            "gate": False,
        },
    )
    document["gate"] = {"max_escalations": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("gate"), extra_backends={"mid": "mid-model"}, edit_config=edit
    )
    yield from serving(gateway)


@pytest.fixture(autouse=True)
def clean(stack: Gateway) -> None:
    reset_backends(stack)


def served(stack: Gateway) -> dict[str, int]:
    return {name: len(backend.requests) for name, backend in stack.backends.items()}


def content(reply: Response) -> str:
    return str(reply.json()["choices"][0]["message"]["content"])


def metric(stack: Gateway, name: str, **labels: str) -> float:
    """One series' value from the classifier's /metrics (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in stack.metrics().splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match[1].split(","))) == wanted:
            return float(match[2])
    return 0.0


def test_a_passing_answer_is_released_unchanged(stack: Gateway) -> None:
    reply = stack.chat("hello")
    assert reply.status == 200, reply.body
    assert reply.headers["x-mock-backend"] == "weak"
    assert reply.headers["x-cascade-confidence"] == "1.000"
    assert "x-cascade-escalated" not in reply.headers
    assert "x-cascade-escalate" not in reply.headers
    # chunked when telemetry reads the response (the default); else the backend's length
    assert reply.headers.get("content-length") in (None, str(len(reply.body)))
    assert reply.json()["model"] == "qwen3-4b"
    assert "[weak]" in content(reply)
    assert served(stack) == {"weak": 1, "strong": 0, "mid": 0}


@pytest.mark.parametrize(
    ("answer", "extra", "reason", "confidence"),
    [
        ({"content": REFUSAL}, {}, "refusal_phrase", "0.500"),
        ({"content": "죄송하지만 그 요청은 도와드릴 수 없습니다."}, {}, "refusal_phrase", "0.500"),
        ({"content": "抱歉，我无法帮助您。"}, {}, "refusal_phrase", "0.500"),
        ({"finish_reason": "length"}, {}, "finish_length", "0.500"),
        ({"finish_reason": "content_filter"}, {}, "finish_content_filter", "0.400"),
        ({"refusal": "No."}, {}, "refusal", "0.300"),
        ({"content": "   "}, {}, "empty", "0.000"),
        (
            {"content": "{not json"},
            {"response_format": {"type": "json_object"}},
            "json_invalid",
            "0.400",
        ),
    ],
)
def test_a_failing_answer_is_retried_on_the_next_tier(
    stack: Gateway, answer: dict[str, Any], extra: dict[str, Any], reason: str, confidence: str
) -> None:
    before = metric(
        stack, "cascade_gate_escalations_total", from_tier="weak", to_tier="mid", reason=reason
    )
    fallbacks = metric(stack, "cascade_fallbacks_total", from_tier="weak", to_tier="mid")
    stack.backends["weak"].script([answer])
    reply = stack.chat("hello", **extra)
    assert reply.status == 200, reply.body
    assert reply.headers["x-mock-backend"] == "mid"
    assert reply.headers["x-cascade-escalated"] == "weak->mid"
    assert reply.headers["x-cascade-confidence"] == confidence
    assert reply.json()["model"] == "mid-model"
    assert "[mid]" in content(reply)
    assert reply.headers.get("content-length") in (None, str(len(reply.body)))
    (mid,) = stack.backends["mid"].requests
    assert mid.model == "mid-model"  # the next tier's model in the retried body
    assert mid.content_length == mid.body_length
    assert served(stack) == {"weak": 1, "strong": 0, "mid": 1}
    wait_for(
        lambda: (
            metric(
                stack,
                "cascade_gate_escalations_total",
                from_tier="weak",
                to_tier="mid",
                reason=reason,
            )
            == before + 1
        ),
        10,
        "the escalation counter",
    )
    # an escalation is not a fallback
    assert metric(stack, "cascade_fallbacks_total", from_tier="weak", to_tier="mid") == fallbacks


def test_json_that_is_valid_passes(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": '{"ok": true}'}])
    reply = stack.chat("hello", response_format={"type": "json_object"})
    assert reply.headers["x-mock-backend"] == "weak"
    assert json.loads(content(reply)) == {"ok": True}


def test_at_most_one_escalation(stack: Gateway) -> None:
    """mid is gated too, but the budget is spent: its refusal goes to the client."""
    stack.backends["weak"].script([{"content": REFUSAL}])
    stack.backends["mid"].script([{"content": REFUSAL}])
    reply = stack.chat("hello")
    assert reply.status == 200
    assert reply.headers["x-mock-backend"] == "mid"
    assert reply.headers["x-cascade-escalated"] == "weak->mid"
    assert content(reply) == REFUSAL
    assert served(stack) == {"weak": 1, "strong": 0, "mid": 1}


def test_a_rule_marked_no_gate_is_not_judged(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": REFUSAL}])
    reply = stack.chat("please check this invoice")
    assert reply.headers["x-cascade-reason"].startswith("finance")
    assert reply.headers["x-mock-backend"] == "weak"
    assert content(reply) == REFUSAL
    assert "x-cascade-confidence" not in reply.headers
    assert served(stack) == {"weak": 1, "strong": 0, "mid": 0}


def test_the_top_tier_is_never_gated(stack: Gateway) -> None:
    stack.backends["strong"].script([{"content": REFUSAL}])
    reply = stack.chat("please refactor this")
    assert reply.headers["x-mock-backend"] == "strong"
    assert content(reply) == REFUSAL
    assert "x-cascade-confidence" not in reply.headers


def test_a_gated_tier_whose_backend_is_down_falls_back(stack: Gateway) -> None:
    before = metric(stack, "cascade_gate_verdicts_total", tier="weak", outcome="skipped_status")
    stack.backends["weak"].script(always="503")
    reply = stack.chat("hello")
    assert reply.status == 200, reply.body
    assert reply.headers["x-mock-backend"] == "mid"
    assert "x-cascade-escalated" not in reply.headers  # a fallback, not an escalation
    assert reply.json()["model"] == "mid-model"
    wait_for(
        lambda: metric(stack, "cascade_fallbacks_total", from_tier="weak", to_tier="mid") > 0,
        10,
        "the fallback counter",
    )
    wait_for(
        lambda: (
            metric(stack, "cascade_gate_verdicts_total", tier="weak", outcome="skipped_status")
            > before
        ),
        10,
        "the skipped verdict",
    )


def test_a_streamed_request_is_not_held(stack: Gateway) -> None:
    """With `streams: false` a stream passes as without a gate."""
    stack.backends["weak"].script([{"content": REFUSAL}])
    reply = stack.chat("hello", stream=True)
    assert reply.status == 200
    assert reply.headers["x-mock-backend"] == "weak"
    assert "x-cascade-confidence" not in reply.headers
    assert reply.body.rstrip().endswith(b"data: [DONE]")


def test_the_discarded_answer_is_charged_to_its_tier(stack: Gateway) -> None:
    before = metric(stack, "cascade_tokens_total", tier="weak", kind="output")
    stack.backends["weak"].script([{"content": REFUSAL}])
    reply = stack.chat("hello")
    assert reply.headers["x-mock-backend"] == "mid"
    wait_for(
        lambda: metric(stack, "cascade_tokens_total", tier="weak", kind="output") > before,
        10,
        "weak's tokens counted although mid answered",
    )


def test_counters_by_tier_and_outcome(stack: Gateway) -> None:
    passed = metric(stack, "cascade_gate_verdicts_total", tier="weak", outcome="passed")
    escalated = metric(stack, "cascade_gate_verdicts_total", tier="weak", outcome="escalated")
    stack.chat("hello")
    stack.backends["weak"].script([{"content": REFUSAL}])
    stack.chat("hello")
    wait_for(
        lambda: (
            (
                metric(stack, "cascade_gate_verdicts_total", tier="weak", outcome="passed"),
                metric(stack, "cascade_gate_verdicts_total", tier="weak", outcome="escalated"),
            )
            == (passed + 1, escalated + 1)
        ),
        10,
        "the verdict counters",
    )
