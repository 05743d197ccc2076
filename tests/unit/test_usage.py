"""Usage read from streamed (SSE) and plain JSON answers, fed in arbitrary chunks."""

from __future__ import annotations

import orjson
import pytest

from extproc.routing.usage import ResponseMeter

USAGE = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}


def sse(include_usage: bool = True) -> bytes:
    events = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}], "usage": None},
        {"choices": [{"delta": {"content": "hello"}}], "usage": None},
        {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": None},
    ]
    if include_usage:
        events.append({"model": "qwen3-4b", "choices": [], "usage": USAGE})
    text = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return text + b"data: [DONE]\n\n"


def feed(meter: ResponseMeter, data: bytes, size: int) -> None:
    for start in range(0, len(data), size):
        meter.feed(data[start : start + size])
    meter.end()


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_sse_usage_in_any_chunking(size: int) -> None:
    meter = ResponseMeter()
    feed(meter, sse(), size)
    assert (meter.tokens_in, meter.tokens_out, meter.model) == (12, 34, "qwen3-4b")
    assert meter.streamed


def test_sse_without_usage_has_none() -> None:
    meter = ResponseMeter()
    feed(meter, sse(include_usage=False), 50)
    assert (meter.tokens_in, meter.tokens_out) == (None, None)


@pytest.mark.parametrize("size", [3, 1000])
def test_plain_json_usage(size: int) -> None:
    body = orjson.dumps(
        {"model": "glm-5", "choices": [{"message": {"content": "x"}}], "usage": USAGE}
    )
    meter = ResponseMeter()
    feed(meter, body, size)
    assert (meter.tokens_in, meter.tokens_out, meter.model) == (12, 34, "glm-5")
    assert not meter.streamed


def test_anthropic_style_names() -> None:
    meter = ResponseMeter()
    feed(meter, orjson.dumps({"usage": {"input_tokens": 5, "output_tokens": 6}}), 4)
    assert (meter.tokens_in, meter.tokens_out) == (5, 6)


def test_large_json_answer_keeps_only_its_tail() -> None:
    body = orjson.dumps({"choices": [{"message": {"content": "y" * 300_000}}], "usage": USAGE})
    meter = ResponseMeter(max_bytes=64 * 1024)
    feed(meter, body, 8192)
    assert (meter.tokens_in, meter.tokens_out) == (12, 34)
    assert len(meter._buffer) == 0 and meter.bytes == len(body)


def test_error_body_and_garbage_are_harmless() -> None:
    meter = ResponseMeter()
    feed(meter, b"upstream connect error or disconnect/reset before headers", 10)
    assert meter.tokens_in is None
    meter = ResponseMeter()
    feed(meter, b'data: {not json\n\ndata: {"usage": 3}\n\n', 5)
    assert meter.tokens_out is None
