"""v7's exact behaviour, every rule kind, text scopes, N tiers, domain overrides, canary split."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from extproc.config.snapshot import Snapshot, TextScope
from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.classify import Decision, canary_bucket, classify, select_text
from extproc.routing.choice import choose_classifier
from tests.conftest import chat_body


def decide(snapshot: Snapshot, body: bytes, version: str | None = None) -> Decision:
    chat = parse_chat(body)
    assert isinstance(chat, ChatRequest)
    return classify(chat, snapshot.classifiers[version or snapshot.stable])


V7_CASES = [
    ("hello there", "weak", "default", ()),
    ("please refactor this module", "strong", "keyword", ("refactor",)),
    ("REFACTOR IT", "strong", "keyword", ("refactor",)),
    ("Refactoring the parser", "strong", "keyword", ("refactor",)),  # inside a longer word
    ("this is a redesign", "strong", "keyword", ("design",)),
    ("the architecture", "strong", "keyword", ("architect",)),
    ("이 모듈을 리팩터링 해줘", "strong", "keyword", ("리팩터",)),
    ("성능 최적화 방법", "strong", "keyword", ("최적화",)),
    ("안녕하세요", "weak", "default", ()),
    ("帮我重构这个函数", "strong", "keyword", ("重构",)),
    ("系统架构图", "strong", "keyword", ("架构",)),
    ("你好", "weak", "default", ()),
    ("fix the bug: 调试 this and optimize", "strong", "keyword", ("调试", "optimize")),
    ("Debug 이 코드", "strong", "keyword", ("debug",)),
    ("SECURITY review", "strong", "keyword", ("security",)),
]


@pytest.mark.parametrize(("text", "tier", "rule", "keywords"), V7_CASES)
def test_v7_keywords_in_three_languages(
    default_snapshot: Snapshot, text: str, tier: str, rule: str, keywords: tuple[str, ...]
) -> None:
    decision = decide(default_snapshot, chat_body(text))
    assert (decision.tier, decision.rule, decision.keywords) == (tier, rule, keywords)
    assert decision.classifier == "v7"


def test_v7_500_chars_is_weak_501_is_strong(default_snapshot: Snapshot) -> None:
    assert decide(default_snapshot, chat_body("a" * 500)).tier == "weak"
    decision = decide(default_snapshot, chat_body("a" * 501))
    assert (decision.tier, decision.rule, decision.reason) == (
        "strong",
        "long_text",
        "long_text:chars>500",
    )
    assert (decision.chars, decision.bytes) == (501, 501)


def test_v7_counts_characters_not_bytes(default_snapshot: Snapshot) -> None:
    korean = "가" * 300  # 300 characters, 900 bytes: the bytes rule ships disabled
    decision = decide(default_snapshot, chat_body(korean))
    assert (decision.tier, decision.chars, decision.bytes) == ("weak", 300, 900)


def test_v7_join_spaces_count_toward_length(default_snapshot: Snapshot) -> None:
    # 250 + 1 space + 249 = 500 → weak; 250 + 1 + 250 = 501 → strong
    assert decide(default_snapshot, chat_body("a" * 250, "b" * 249)).tier == "weak"
    assert decide(default_snapshot, chat_body("a" * 250, "b" * 250)).tier == "strong"


def test_v7_system_prompt_counts_toward_length(default_snapshot: Snapshot) -> None:
    body = orjson.dumps(
        {
            "messages": [
                {"role": "system", "content": "s" * 400},
                {"role": "user", "content": "u" * 100},
            ]
        }
    )
    decision = decide(default_snapshot, body)
    assert (decision.tier, decision.chars) == ("strong", 501)


def test_v7_five_messages_weak_six_strong(default_snapshot: Snapshot) -> None:
    assert decide(default_snapshot, chat_body(*["hi"] * 5)).tier == "weak"
    decision = decide(default_snapshot, chat_body(*["hi"] * 6))
    assert (decision.tier, decision.rule, decision.messages) == ("strong", "many_messages", 6)


def test_v7_keyword_rule_wins_over_length(default_snapshot: Snapshot) -> None:
    decision = decide(default_snapshot, chat_body("optimize " + "x" * 600))
    assert decision.rule == "keyword"


def test_v7_content_parts_are_read(default_snapshot: Snapshot) -> None:
    body = orjson.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url"}, {"type": "text", "text": "please debug"}],
                }
            ]
        }
    )
    assert decide(default_snapshot, body).keywords == ("debug",)


def test_v7_mixed_script_lengths(default_snapshot: Snapshot) -> None:
    decision = decide(default_snapshot, chat_body("hello 안녕 你好"))
    assert (decision.chars, decision.bytes) == (11, 6 + 6 + 1 + 6)


def test_v7_bytes_rule_ships_disabled(default_snapshot: Snapshot) -> None:
    v7 = default_snapshot.classifiers["v7"]
    assert v7.disabled_rules == ("long_bytes",)
    assert [r.name for r in v7.rules] == ["keyword", "long_text", "many_messages"]


def test_v7_reason_header_is_ascii(default_snapshot: Snapshot) -> None:
    decision = decide(default_snapshot, chat_body("리팩터"))
    assert decision.reason == "keyword:%EB%A6%AC%ED%8C%A9%ED%84%B0"
    assert decision.reason.isascii()


RULES_CONFIG = """
tiers: [{name: simple}, {name: medium}, {name: critical}]
classifier: t
classifiers:
  t:
    text: {scope}
    default: simple
    rules:
      - {name: domain, kind: keyword, tier: critical, keywords: [contract, 소송, 财务, wire transfer]}
      - {name: big, kind: bytes, gt: 20, tier: medium}
      - {name: long, kind: chars, gt: 10, lt: 15, tier: medium}
      - {name: turns, kind: messages, gt: 2, tier: medium}
"""


@pytest.fixture
def three_tiers(make_snapshot: Callable[[str], Snapshot]) -> Snapshot:
    return make_snapshot(RULES_CONFIG.replace("{scope}", "all"))


@pytest.mark.parametrize(
    ("contents", "tier", "rule"),
    [
        (["review this CONTRACT"], "critical", "domain"),
        (["소송 준비"], "critical", "domain"),
        (["财务报表"], "critical", "domain"),
        (["a wire   transfer"], "simple", "default"),  # keywords are exact substrings
        (["please wire transfer"], "critical", "domain"),
        (["가나다라마바사"], "medium", "big"),  # 7 chars, 21 bytes
        (["abcdefghijk"], "medium", "long"),  # 11 chars
        (["abcdefghijklmnop"], "simple", "default"),  # 16 chars: outside 10 < n < 15
        (["a", "b", "c"], "medium", "turns"),
        (["hi"], "simple", "default"),
    ],
)
def test_rule_kinds_with_three_tiers(
    three_tiers: Snapshot, contents: list[str], tier: str, rule: str
) -> None:
    decision = decide(three_tiers, chat_body(*contents))
    assert (decision.tier, decision.rule) == (tier, rule)


def test_text_scope_setting(make_snapshot: Callable[[str], Snapshot]) -> None:
    messages = (
        ("system", "contract terms"),
        ("user", "first"),
        ("assistant", "reply"),
        ("user", "last"),
    )
    assert select_text(messages, TextScope.ALL) == "contract terms first reply last"
    assert select_text(messages, TextScope.USER) == "first last"
    assert select_text(messages, TextScope.LAST_USER) == "last"
    assert select_text((("system", "x"),), TextScope.LAST_USER) == ""
    body = orjson.dumps({"messages": [{"role": role, "content": text} for role, text in messages]})
    assert decide(make_snapshot(RULES_CONFIG.replace("{scope}", "all")), body).rule == "domain"
    assert decide(make_snapshot(RULES_CONFIG.replace("{scope}", "user")), body).rule == "turns"


def test_canary_split_is_sticky_and_weighted(make_snapshot: Callable[[str], Snapshot]) -> None:
    snapshot = make_snapshot(
        """
tiers: [{name: weak}, {name: strong}]
classifier: v7
canary: {version: v8, weight: 10}
classifiers:
  v7: {default: weak}
  v8: {default: strong}
"""
    )
    picks = [choose_classifier(snapshot, f"user-{i}").version for i in range(2000)]
    share = picks.count("v8") / len(picks)
    assert 0.08 < share < 0.12
    assert all(choose_classifier(snapshot, "user-7").version == picks[7] for _ in range(5))
    assert choose_classifier(snapshot, None).version == "v7"
    assert 0 <= canary_bucket(b"anything") < 100
