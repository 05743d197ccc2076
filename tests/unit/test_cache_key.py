"""Response-cache keys: every field that changes the answer changes the key; what may not differ
between near-duplicates (numbers, options, negations, code) changes the semantic bucket."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from extproc.core.cache_key import facts, request_keys, tenant_of

BASE: dict[str, Any] = {
    "model": "auto",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    "temperature": 0,
}


def keys(document: dict[str, Any], tenant: str = "t", partition: str = "0/v1/p") -> Any:
    return request_keys(document, tenant, partition)


def changed(**fields: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    document.update(fields)
    return document


@pytest.mark.parametrize(
    "variant",
    [
        changed(temperature=0.5),
        changed(top_p=0.9),
        changed(max_tokens=10),
        changed(n=2),
        changed(seed=7),
        changed(stop=["\n"]),
        changed(response_format={"type": "json_object"}),
        changed(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        changed(tool_choice="none"),
        changed(
            messages=[
                {"role": "developer", "content": "You are terse."},  # another role
                {"role": "user", "content": "What is 2 + 2?"},
            ]
        ),
        changed(
            messages=[
                {"role": "system", "content": "You are verbose."},  # another system prompt
                {"role": "user", "content": "What is 2 + 2?"},
            ]
        ),
        changed(
            messages=[
                *BASE["messages"],
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}],
                },
            ]
        ),
    ],
)
def test_every_answer_changing_field_changes_the_exact_key(variant: dict[str, Any]) -> None:
    assert keys(variant).exact != keys(BASE).exact


def test_model_stream_and_key_order_do_not_change_the_key() -> None:
    reordered = {key: BASE[key] for key in reversed(list(BASE))}
    assert keys(
        changed(model="gpt-x", stream=True, stream_options={"include_usage": True})
    ).exact == (keys(BASE).exact)
    assert keys(reordered).exact == keys(BASE).exact


def test_tenant_and_partition_change_every_key() -> None:
    base = keys(BASE)
    for other in (keys(BASE, tenant="u"), keys(BASE, partition="1/v1/p")):
        assert other.exact != base.exact
        assert other.bucket != base.bucket


def test_the_tenant_is_an_hmac_of_the_identity() -> None:
    alice = tenant_of(b"s" * 32, "x-user-id\x00alice")
    assert alice == tenant_of(b"s" * 32, "x-user-id\x00alice")
    assert alice != tenant_of(b"s" * 32, "x-user-id\x00bob")
    assert alice != tenant_of(b"t" * 32, "x-user-id\x00alice")  # another secret
    assert "alice" not in alice


def test_the_bucket_ignores_only_the_last_user_message() -> None:
    reworded = copy.deepcopy(BASE)
    reworded["messages"][-1]["content"] = "What is 2 + 2 ?"
    assert keys(reworded).bucket == keys(BASE).bucket
    assert keys(reworded).exact != keys(BASE).exact
    earlier = copy.deepcopy(BASE)
    earlier["messages"][0]["content"] = "You are kind."
    assert keys(earlier).bucket != keys(BASE).bucket


def test_no_bucket_unless_the_last_message_is_user_text() -> None:
    tool_turn = changed(messages=[*BASE["messages"], {"role": "tool", "content": "4"}])
    assert keys(tool_turn).bucket is None
    image = changed(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                ],
            }
        ]
    )
    assert keys(image).bucket is None
    parts = changed(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}])
    assert keys(parts).text == "Hi there"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("She has 16 eggs.", "She has 61 eggs."),
        ("Costs $2.50 each", "Costs $2.05 each"),
        ("She eats three eggs.", "She eats four eggs."),
        ("Is 7 prime?", "Is 7 not prime?"),
        ("Which one is true?", "Which one isn't true?"),
        ("Which is the largest planet?", "Which is the smallest planet?"),
        ("Rename my_var please", "Rename my_val please"),
        ("Fix the call to parseInt()", "Fix the call to parseFloat()"),
        ('Translate "good morning"', 'Translate "good night"'),
        ("Explain `git rebase`", "Explain `git merge`"),
        ("Pick one:\nA. red\nB. blue", "Pick one:\nA. blue\nB. red"),
        ("Run this:\n```\nprint(1)\n```", "Run this:\n```\nprint(2)\n```"),
        ("这个函数有错误吗", "这个函数没有错误吗"),
        ("사과가 세 개 있다", "사과가 세 개 없다"),
        ("三个苹果", "五个苹果"),
        ("in two's complement", "in three's complement"),
        ("two-thirds of the class", "three-thirds of the class"),
        ("the best-selling book", "the worst-selling book"),
    ],
)
def test_facts_tell_near_duplicates_apart(left: str, right: str) -> None:
    assert facts(left) != facts(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("She has 16 eggs. How many now?", "How many now? She has 16 eggs."),
        ("What  is the   capital of France?", "what is the capital of france?"),
        ("Please explain closures in Python", "Explain closures in Python, please"),
    ],
)
def test_facts_survive_rewording(left: str, right: str) -> None:
    assert facts(left) == facts(right)
