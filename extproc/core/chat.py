"""Parse an OpenAI chat-completions body into the facts the classifier reads.

Pure and bounded: bytes in, `ChatRequest` or a `ChatParseError` value out. Nothing here raises
on bad input and nothing does I/O.

What counts as a message's text: a string `content`; the `text` of `{"type": "text"}` parts when
`content` is a list (image, audio and file parts are ignored); nothing for `null` content (e.g. an
assistant turn that only carries `tool_calls`). Every role is kept (`system`, `developer`,
`user`, `assistant`, `tool`, `function`); unknown fields anywhere are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from extproc.core.errors import BodyNotUtf8, BodyTooLarge, ChatParseError, InvalidChatBody


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request the router looks at."""

    #: (role, text) per message, in order; text is "" when the message has none.
    messages: tuple[tuple[str, str], ...]
    #: The `model` the client asked for, or "" when absent.
    model: str
    #: The decoded JSON object, kept so a model rewrite need not parse twice.
    document: dict[str, object]


def parse_chat(body: bytes, max_bytes: int = 0) -> ChatRequest | ChatParseError:
    """Parse a request body; return the request or the error (never raise)."""
    if max_bytes and len(body) > max_bytes:
        return BodyTooLarge(f"request body of {len(body)} bytes exceeds the limit of {max_bytes}")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return BodyNotUtf8("request body is not valid UTF-8")
        return InvalidChatBody(f"request body is not valid JSON: {exc}")
    return chat_from_document(document)


def chat_from_document(document: object) -> ChatRequest | ChatParseError:
    """Validate an already decoded JSON document as a chat request."""
    if not isinstance(document, dict):
        return InvalidChatBody("request body must be a JSON object")
    raw_messages = document.get("messages")
    if raw_messages is None:
        return InvalidChatBody("'messages' is required")
    if not isinstance(raw_messages, list):
        return InvalidChatBody("'messages' must be an array")
    model = document.get("model", "")
    if not isinstance(model, str):
        return InvalidChatBody("'model' must be a string")
    messages: list[tuple[str, str]] = []
    for index, message in enumerate(raw_messages):
        if not isinstance(message, dict):
            return InvalidChatBody(f"'messages[{index}]' must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            return InvalidChatBody(f"'messages[{index}].role' must be a string")
        text = _content_text(message.get("content"))
        if text is None:
            return InvalidChatBody(
                f"'messages[{index}].content' must be a string, an array of parts or null"
            )
        messages.append((role, text))
    return ChatRequest(messages=tuple(messages), model=model, document=document)


def _content_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if part.get("type", "text") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
                    elif text is not None:
                        return None
            else:
                return None
        return " ".join(texts)
    return None
