from __future__ import annotations

import orjson
import pytest

from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.errors import BodyNotUtf8, BodyTooLarge, ChatParseError, InvalidChatBody


def parsed(doc: object) -> ChatRequest:
    result = parse_chat(orjson.dumps(doc))
    assert isinstance(result, ChatRequest), result
    return result


def test_parse_chat_string_content() -> None:
    chat = parsed({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.messages == (("user", "hi"),)
    assert chat.model == "m"


def test_parse_chat_content_parts_keep_text_and_skip_media() -> None:
    chat = parsed(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look at"},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                        {"type": "input_audio", "input_audio": {"data": "..."}},
                        {"type": "text", "text": "this"},
                    ],
                }
            ]
        }
    )
    assert chat.messages == (("user", "look at this"),)


def test_parse_chat_null_content_with_tool_calls_and_all_roles() -> None:
    chat = parsed(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                {"role": "tool", "tool_call_id": "1", "content": "result"},
                {"role": "function", "name": "f", "content": "out"},
            ],
            "unknown_field": {"nested": True},
        }
    )
    assert [role for role, _ in chat.messages] == [
        "developer",
        "system",
        "user",
        "assistant",
        "tool",
        "function",
    ]
    assert chat.messages[3] == ("assistant", "")


def test_parse_chat_missing_model_is_empty() -> None:
    assert parsed({"messages": []}).model == ""


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (b"{not json", InvalidChatBody, "not valid JSON"),
        (b"", InvalidChatBody, "not valid JSON"),
        (b"[1, 2]", InvalidChatBody, "JSON object"),
        (b'"text"', InvalidChatBody, "JSON object"),
        (b"{}", InvalidChatBody, "'messages' is required"),
        (b'{"messages": "hi"}', InvalidChatBody, "must be an array"),
        (b'{"messages": ["hi"]}', InvalidChatBody, "messages[0]' must be an object"),
        (b'{"messages": [{"content": "hi"}]}', InvalidChatBody, "role' must be a string"),
        (b'{"messages": [{"role": "user", "content": 5}]}', InvalidChatBody, "content"),
        (b'{"messages": [{"role": "user", "content": [5]}]}', InvalidChatBody, "content"),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}',
            InvalidChatBody,
            "content",
        ),
        (b'{"model": 3, "messages": []}', InvalidChatBody, "'model' must be a string"),
        (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', BodyNotUtf8, "UTF-8"),
    ],
    ids=[
        "not-json",
        "empty",
        "array",
        "string",
        "no-messages",
        "messages-not-list",
        "message-not-object",
        "no-role",
        "content-number",
        "part-number",
        "part-text-number",
        "model-number",
        "invalid-utf8",
    ],
)
def test_parse_chat_malformed_bodies_give_typed_errors(
    body: bytes, error: type[ChatParseError], fragment: str
) -> None:
    result = parse_chat(body)
    assert isinstance(result, error)
    assert fragment in str(result)


def test_parse_chat_too_large_fails_open() -> None:
    result = parse_chat(b'{"messages": []}' + b" " * 100, max_bytes=50)
    assert isinstance(result, BodyTooLarge)
    assert result.fail_open
    assert not InvalidChatBody("x").fail_open
