"""What the cache stores from a backend's reply, and how it replays it."""

from __future__ import annotations

import orjson
import pytest

from extproc.core.cached_answer import from_json, from_sse, replay_sse


def completion(**choice: object) -> bytes:
    message = choice.pop("message", {"role": "assistant", "content": "Paris."})
    return orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 5,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        }
    )


def sse(*deltas: dict[str, object], finish: str = "stop", done: bool = True) -> bytes:
    events = [
        {"id": "c2", "model": "m", "created": 9, "choices": [{"index": 0, "delta": d}]}
        for d in deltas
    ]
    events.append({"id": "c2", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events.append(
        {"id": "c2", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    )
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def test_a_complete_json_answer_is_stored_as_sent() -> None:
    body = completion()
    answer = from_json(body, tool_calls=False)
    assert not isinstance(answer, str)
    assert answer.body == body
    assert (answer.content, answer.prompt_tokens, answer.completion_tokens) == ("Paris.", 7, 2)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed"),
        (completion(finish_reason="length"), "finish_reason"),
        (completion(finish_reason="content_filter"), "finish_reason"),
        (completion(message={"role": "assistant", "content": None, "refusal": "No."}), "refusal"),
        (completion(message={"role": "assistant", "content": None}), "empty"),
        (
            completion(
                message={"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
                finish_reason="tool_calls",
            ),
            "finish_reason",
        ),
        (orjson.dumps({"choices": [{}, {}]}), "choices"),
    ],
)
def test_what_is_not_stored_and_why(body: bytes, reason: str) -> None:
    assert from_json(body, tool_calls=False) == reason


def test_tool_calls_are_stored_only_when_allowed() -> None:
    calls = [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = completion(
        message={"role": "assistant", "content": None, "tool_calls": calls},
        finish_reason="tool_calls",
    )
    answer = from_json(body, tool_calls=True)
    assert not isinstance(answer, str)
    assert orjson.loads(answer.tool_calls) == calls


def test_a_stream_is_stored_only_when_it_completed() -> None:
    deltas = ({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"})
    answer = from_sse(sse(*deltas), tool_calls=False)
    assert not isinstance(answer, str)
    assert answer.content == "Hello"
    assert (answer.prompt_tokens, answer.completion_tokens) == (3, 4)
    document = orjson.loads(answer.body)
    assert document["choices"][0]["message"]["content"] == "Hello"
    assert from_sse(sse(*deltas, done=False), tool_calls=False) == "incomplete"
    assert from_sse(sse(*deltas, finish="length"), tool_calls=False) == "finish_reason"
    assert from_sse(sse({"refusal": "no"}), tool_calls=False) == "refusal"
    assert from_sse(b"data: {oops\n\n", tool_calls=False) == "malformed"


def test_the_replay_is_a_well_formed_stream() -> None:
    answer = from_json(
        completion(message={"role": "assistant", "content": "x" * 150}), tool_calls=False
    )
    assert not isinstance(answer, str)
    stream = replay_sse(answer, 64)
    events = [line[6:] for line in stream.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "x" * 150
    assert [len(c["choices"][0]["delta"].get("content", "")) for c in chunks[1:4]] == [64, 64, 22]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 9
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # and the replay, read back, is the same answer
    again = from_sse(stream, tool_calls=False)
    assert not isinstance(again, str) and again.content == answer.content
