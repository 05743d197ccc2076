"""Stored answers of the response cache: read from a backend reply, replayed as JSON or SSE.

Only a complete, single-choice answer that ended with `finish_reason: stop` is storable: from a
JSON `chat.completion`, or from an SSE stream that ended with `data: [DONE]`. Anything else (a
cut stream, `length`, a refusal, several choices, tool calls unless allowed, malformed JSON) is
not, and the reason says why. What is stored is always a backend's reply, never client input.

A stored answer replays either way: the JSON document for a plain request (the backend's own
bytes when it answered in JSON), or a well-formed SSE stream (a role chunk, the content in
chunks, the finish chunk, a `usage` chunk, `data: [DONE]`) for `stream: true`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Answer:
    """One stored answer."""

    #: the `chat.completion` JSON document (the backend's bytes, or rebuilt from SSE)
    body: bytes
    content: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    #: the tool calls as JSON (`[]` when none)
    tool_calls: bytes = b"[]"
    identifier: str = ""
    created: int = 0


def from_json(body: bytes, *, tool_calls: bool) -> Answer | str:
    """A JSON `chat.completion`, or why it cannot be stored."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "malformed"
    if not isinstance(document, dict):
        return "malformed"
    choices = document.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return "choices"
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return "malformed"
    reason = _refused(message) or _finish(choice.get("finish_reason"), tool_calls)
    if reason:
        return reason
    calls = message.get("tool_calls") or []
    if calls and not tool_calls:
        return "tool_calls"
    content = message.get("content")
    if content is None and not calls:
        return "empty"
    if content is not None and not isinstance(content, str):
        return "malformed"
    prompt, completion = _usage(document.get("usage"))
    return Answer(
        body=body,
        content=content or "",
        model=_text(document.get("model")),
        finish_reason=_text(choice.get("finish_reason")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        tool_calls=orjson.dumps(calls),
        identifier=_text(document.get("id")),
        created=_integer(document.get("created")),
    )


def from_sse(body: bytes, *, tool_calls: bool) -> Answer | str:
    """An SSE `chat.completion.chunk` stream, or why it cannot be stored."""
    parts: list[str] = []
    calls: dict[int, dict[str, object]] = {}
    finish = identifier = model = ""
    created = prompt = completion = 0
    done = False
    for raw_line in body.splitlines():
        line = raw_line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return "malformed"
        if not isinstance(chunk, dict):
            return "malformed"
        identifier = identifier or _text(chunk.get("id"))
        model = model or _text(chunk.get("model"))
        created = created or _integer(chunk.get("created"))
        if chunk.get("usage"):
            prompt, completion = _usage(chunk.get("usage"))
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                return "malformed"
            if choice.get("index", 0) != 0:
                return "choices"
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                return "malformed"
            if _refused(delta):
                return "refusal"
            piece = delta.get("content")
            if isinstance(piece, str):
                parts.append(piece)
            for call in delta.get("tool_calls") or ():
                if not tool_calls:
                    return "tool_calls"
                _merge_call(calls, call)
            if choice.get("finish_reason"):
                finish = _text(choice.get("finish_reason"))
    if not done:
        return "incomplete"
    reason = _finish(finish, tool_calls)
    if reason:
        return reason
    content = "".join(parts)
    if not content and not calls:
        return "empty"
    call_list = [calls[index] for index in sorted(calls)]
    message: dict[str, object] = {"role": "assistant", "content": content or None}
    if call_list:
        message["tool_calls"] = call_list
    document = {
        "id": identifier,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _usage_document(prompt, completion),
    }
    return Answer(
        body=orjson.dumps(document),
        content=content,
        model=model,
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
        tool_calls=orjson.dumps(call_list),
        identifier=identifier,
        created=created,
    )


def replay_sse(answer: Answer, chunk_chars: int) -> bytes:
    """The stored answer as one well-formed SSE stream, ending with usage and `[DONE]`."""
    head = {
        "id": answer.identifier or "chatcmpl-cached",
        "object": "chat.completion.chunk",
        "created": answer.created,
        "model": answer.model,
    }
    events: list[bytes] = []

    def emit(choices: list[dict[str, object]], **extra: object) -> None:
        events.append(b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n")

    emit([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    content = answer.content
    step = max(1, chunk_chars)
    for start in range(0, len(content), step):
        piece = content[start : start + step]
        emit([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    calls = orjson.loads(answer.tool_calls)
    if calls:
        indexed = [{"index": i, **call} for i, call in enumerate(calls)]
        emit([{"index": 0, "delta": {"tool_calls": indexed}, "finish_reason": None}])
    emit([{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}])
    emit([], usage=_usage_document(answer.prompt_tokens, answer.completion_tokens))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _merge_call(calls: dict[int, dict[str, object]], call: object) -> None:
    if not isinstance(call, dict):
        return
    index = call.get("index", 0)
    slot = calls.setdefault(index if isinstance(index, int) else 0, {"type": "function"})
    if isinstance(call.get("id"), str):
        slot["id"] = call["id"]
    function = call.get("function")
    if isinstance(function, dict):
        target = slot.setdefault("function", {"name": "", "arguments": ""})
        assert isinstance(target, dict)
        if isinstance(function.get("name"), str):
            target["name"] = str(target["name"]) + function["name"]
        if isinstance(function.get("arguments"), str):
            target["arguments"] = str(target["arguments"]) + function["arguments"]


def _refused(message: dict[str, object]) -> str:
    return "refusal" if message.get("refusal") else ""


def _finish(reason: object, tool_calls: bool) -> str:
    """Only an answer that ended on its own (or called tools, when those may be stored)."""
    if reason == "stop" or (tool_calls and reason == "tool_calls"):
        return ""
    return "finish_reason"


def _usage(usage: object) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    return _integer(usage.get("prompt_tokens")), _integer(usage.get("completion_tokens"))


def _usage_document(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _integer(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
