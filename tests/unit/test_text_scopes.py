"""Text scopes: the system prompt counted apart from the conversation (IDE and agent traffic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extproc.config.lint import lint
from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, compile_config, load_snapshot
from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.classify import classify, count_messages, select_text
from extproc.core.errors import ConfigError
from extproc.core.rules import TextScope

IDE_CONFIG = Path("envoy/variants/ide-agents.cascade.yaml")

_INSTRUCTIONS = (
    "You are an AI coding assistant working inside the user's editor. Follow the repository's "
    "conventions, keep answers short, and show code in fenced blocks. Tools: read_file(path), "
    "search(query), run_tests(target), apply_patch(diff). Prefer small, reviewable edits; "
    "never invent file paths; when a test fails, debug it before proposing a fix; mention "
    "security and performance concerns when you see them. "
)
#: An IDE's system prompt of 3,900 characters (instructions and tool descriptions).
IDE_SYSTEM_PROMPT = (_INSTRUCTIONS * 20)[:3900]


def chat(*messages: tuple[str, str]) -> ChatRequest:
    body = json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]})
    parsed = parse_chat(body.encode())
    assert isinstance(parsed, ChatRequest)
    return parsed


def decide(snapshot: Snapshot, request: ChatRequest) -> tuple[str, str]:
    decision = classify(request, snapshot.classifiers[snapshot.stable])
    return decision.tier, decision.rule


@pytest.fixture(scope="module")
def ide() -> Snapshot:
    return load_snapshot(IDE_CONFIG)


def test_ide_prompt_with_a_one_line_question_stays_weak(ide: Snapshot) -> None:
    assert len(IDE_SYSTEM_PROMPT) == 3900
    question = chat(("system", IDE_SYSTEM_PROMPT), ("user", "what does the regex ^a+$ match?"))
    assert decide(load_snapshot(DEFAULT_CONFIG), question) == ("strong", "keyword")
    assert decide(ide, question) == ("weak", "default")
    # without its keywords the default config still sends it to strong by length alone
    plain = chat(
        (
            "system",
            IDE_SYSTEM_PROMPT.replace("debug", "")
            .replace("security", "")
            .replace("performance", ""),
        ),
        ("user", "what does ^a+$ match?"),
    )
    assert decide(load_snapshot(DEFAULT_CONFIG), plain) == ("strong", "long_text")
    assert decide(ide, plain) == ("weak", "default")


def test_the_ide_config_still_escalates_what_the_user_asks(ide: Snapshot) -> None:
    system = ("system", IDE_SYSTEM_PROMPT)
    assert decide(ide, chat(system, ("user", "please refactor this class"))) == (
        "strong",
        "keyword",
    )
    assert decide(ide, chat(system, ("user", "x" * 501))) == ("strong", "long_text")
    turns = [("user", "next?"), ("assistant", "ok")] * 6
    assert decide(ide, chat(system, *turns)) == ("strong", "many_turns")
    # an agent's tool loop: results count as conversation text, the calls not as user turns
    tools = [("user", "fix it"), *[("assistant", ""), ("tool", "ok")] * 8]
    assert decide(ide, chat(system, *tools)) == ("weak", "default")
    huge = chat(("system", "y" * 30001), ("user", "hi"))
    assert decide(ide, huge) == ("strong", "huge_system_prompt")
    # a keyword in an earlier user turn does not count (last_user), unlike in v7
    earlier = chat(system, ("user", "debug this"), ("assistant", "done"), ("user", "thanks"))
    assert decide(ide, earlier) == ("weak", "default")


def test_scopes_select_and_count() -> None:
    messages = (
        ("system", "S"),
        ("developer", "D"),
        ("user", "u1"),
        ("assistant", "a"),
        ("tool", ""),
        ("user", "u2"),
    )
    assert select_text(messages, TextScope.CONVERSATION) == "u1 a u2"
    assert select_text(messages, TextScope.SYSTEM) == "S D"
    counts = {scope: count_messages(messages, scope) for scope in TextScope}
    assert counts == {
        TextScope.ALL: 6,
        TextScope.USER: 2,
        TextScope.LAST_USER: 1,
        TextScope.CONVERSATION: 4,
        TextScope.SYSTEM: 2,
    }


def test_a_messages_rule_without_its_own_scope_counts_every_message() -> None:
    snapshot = compile_config(
        "tiers: [{name: weak}, {name: strong}]\nclassifier: v1\nclassifiers:\n"
        "  v1: {text: user, default: weak, rules: [{kind: messages, gt: 2, tier: strong}]}\n"
    )
    request = chat(("system", "s"), ("user", "a"), ("assistant", "b"))
    assert decide(snapshot, request) == ("strong", "messages")


def test_a_rule_scope_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        compile_config(
            "tiers: [{name: weak}]\nclassifier: v1\nclassifiers:\n  v1: {default: weak, rules:"
            " [{kind: chars, gt: 1, tier: weak, text: prompt}]}\n"
        )
    assert info.value.path == "classifiers.v1.rules[0].text"
    assert "expected one of all, user, last_user, conversation, system" in info.value.message


def test_rules_on_other_scopes_do_not_shadow_each_other(ide: Snapshot) -> None:
    assert lint(ide) == []
    snapshot = compile_config(
        "tiers: [{name: weak}, {name: strong}]\nclassifier: v1\nclassifiers:\n  v1: {default:"
        " weak, rules: [{name: a, kind: chars, gt: 5, tier: strong},"
        " {name: b, kind: chars, gt: 9, tier: strong, text: system}]}\n"
    )
    assert lint(snapshot) == []
