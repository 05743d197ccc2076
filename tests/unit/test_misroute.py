"""Retry-pattern similarity, feedback judgement, the bounded memory state, redaction."""

from __future__ import annotations

import time
from typing import Any

import pytest

from extproc.config.snapshot import FeedbackSettings, StateSettings
from extproc.routing.processor import retry_excerpt
from extproc.telemetry.misroute import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    MemoryState,
    RecentRequest,
    RequestSummary,
    find_retry,
    hash_user,
    judge_feedback,
    pack_sketch,
    similarity,
    sketch,
    unpack_sketch,
)
from extproc.telemetry.redact import builtin_redact, load_redactor


@pytest.mark.parametrize(
    ("a", "b", "similar"),
    [
        ("how do I reverse a list in python", "how do I reverse a list in python", True),
        ("how do I reverse a list in python", "How do I reverse a list in Python?", True),
        ("how do I reverse a list in python", "what is the capital of France", False),
        ("이 함수를 리팩터링 해줘", "이 함수를 리팩터링 해줘!", True),
        ("이 함수를 리팩터링 해줘", "오늘 날씨 어때요", False),
        ("帮我重构这个函数", "帮我重构这个函数吧", True),
        ("write a sort function", "write a sort function in rust with tests and benchmarks", False),
    ],
    ids=["same", "case-punct", "other", "ko-same", "ko-other", "zh-same", "longer"],
)
def test_similarity_threshold(a: str, b: str, similar: bool) -> None:
    assert (similarity(sketch(a), sketch(b)) >= 0.8) is similar


def test_long_texts_are_estimated_close_to_exact() -> None:
    words = [f"word{i}" for i in range(400)]
    a = " ".join(words)
    b = " ".join(words[:360] + [f"other{i}" for i in range(40)])
    low_a, low_b = a.lower(), b.lower()
    sa = {low_a[i : i + 3] for i in range(len(low_a) - 2)}
    sb = {low_b[i : i + 3] for i in range(len(low_b) - 2)}
    exact = len(sa & sb) / len(sa | sb)
    assert similarity(sketch(a), sketch(b)) == pytest.approx(exact, abs=0.12)
    assert len(sketch(a)) == 128


def test_sketch_round_trips_and_hides_text() -> None:
    values = sketch("my secret prompt about payroll")
    packed = pack_sketch(values)
    assert unpack_sketch(packed) == values
    assert "payroll" not in packed


def test_retry_excerpt_takes_last_user_message_bounded() -> None:
    messages = (
        ("system", "be nice"),
        ("user", "first"),
        ("assistant", "ok"),
        ("user", "x " * 5000),
    )
    text = retry_excerpt(messages)
    assert len(text) <= 513 and text.startswith("x x")
    assert retry_excerpt((("system", "only"),)) == ""


def entry(
    request_id: str, age: float, tier: str = "weak", text: str = "reverse a list", status: int = 200
) -> RecentRequest:
    return RecentRequest(time.time() - age, request_id, tier, "v7", status, sketch(text))


@pytest.mark.parametrize(
    ("earlier", "found"),
    [
        ({"request_id": "a", "age": 30}, True),
        ({"request_id": "a", "age": 400}, False),  # outside the window
        ({"request_id": "a", "age": 30, "tier": "strong"}, False),  # the top tier answered
        ({"request_id": "a", "age": 30, "status": 503}, False),  # an error, not a weak answer
        ({"request_id": "a", "age": 30, "text": "capital of France"}, False),  # not similar
        ({"request_id": "b", "age": 30}, False),  # the same request
    ],
    ids=["retry", "old", "strong", "error", "different", "self"],
)
def test_find_retry(earlier: dict[str, Any], found: bool) -> None:
    # built here, not at collection: the window is measured from now
    current = entry("b", 0)
    match = find_retry([entry(**earlier)], current, top_tier="strong", threshold=0.8, window_s=300)
    assert (match is not None) is found
    if match is not None:
        assert (match.request_id, match.classifier) == ("a", "v7")


def summary(tier: str, chars: int = 20, tokens_out: int | None = 30) -> RequestSummary:
    return RequestSummary(
        "r", 0.0, "", tier, tier, "v7", "rule", chars, 1, 200, 10, tokens_out, 0.1
    )


@pytest.mark.parametrize(
    ("item", "score", "expected"),
    [
        (summary("weak"), -1, FALSE_NEGATIVE),
        (summary("weak"), 1, ""),
        (summary("strong"), 1, FALSE_POSITIVE),
        (summary("strong"), 0, FALSE_POSITIVE),
        (summary("strong"), -1, ""),
        (summary("strong", chars=900), 1, ""),
        (summary("strong", tokens_out=2000), 1, ""),
    ],
    ids=[
        "weak-down",
        "weak-up",
        "strong-short-up",
        "strong-neutral",
        "strong-down",
        "long",
        "costly",
    ],
)
def test_judge_feedback(item: RequestSummary, score: int, expected: str) -> None:
    assert judge_feedback(item, score, top_tier="strong", rules=FeedbackSettings()) == expected


async def test_memory_state_is_bounded() -> None:
    state = MemoryState(StateSettings(max_users=2, max_requests=3), per_user=2, window_s=300)
    for user in ("u1", "u2", "u3"):
        for i in range(3):
            await state.remember(user, entry(f"{user}-{i}", 1))
    assert await state.recent("u1") == []  # least recently used user dropped
    assert [e.request_id for e in await state.recent("u3")] == ["u3-1", "u3-2"]
    for i in range(4):
        await state.put_request(
            summary("weak").__class__(
                f"r{i}", 0, "", "weak", "weak", "v7", "x", 1, 1, 200, None, None, None
            )
        )
    assert await state.get_request("r0") is None
    assert (await state.get_request("r3")) is not None


def test_user_hash_is_stable_and_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hash_user("alice") == hash_user("alice") != hash_user("bob")
    assert hash_user("") == ""
    plain = hash_user("alice")
    monkeypatch.setenv("CASCADE_USER_HASH_KEY", "pepper")
    assert hash_user("alice") != plain


def test_builtin_redaction() -> None:
    text = (
        "mail bob@example.com key sk-abcdefghijklmnop1234 call 010-1234-5678 Bearer abc.def.ghijk"
    )
    out = builtin_redact(text)
    for secret in ("bob@example.com", "sk-abcdefghijklmnop1234", "1234-5678", "abc.def.ghijk"):
        assert secret not in out
    assert "mail" in out and "call" in out
    assert load_redactor("none")("a@b.cd") == "a@b.cd"
    assert load_redactor("extproc.telemetry.redact:builtin_redact")("a@b.cd") == "[email]"
