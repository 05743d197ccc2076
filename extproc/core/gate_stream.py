"""The confidence gate's view of a streamed answer: an SSE prefix read into an `Answer`.

Pure and bounded: bytes in (chunks as Envoy delivers them, cut anywhere), facts out. Reads the
OpenAI `chat.completion.chunk` events of the first choice: content and refusal deltas,
`finish_reason`, tool-call deltas (name and argument pieces) and `logprobs.content`. A token is
counted per event that carries content (the usual one-token-per-event of OpenAI-compatible
servers). At most `MAX_BYTES` of the prefix are kept; beyond that only the end of stream is seen.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.core.gate import Answer, logprobs_of

__all__ = ["MAX_BYTES", "StreamPrefix", "with_logprobs", "without_logprobs"]

MAX_BYTES = 1 << 20


class StreamPrefix:
    __slots__ = (
        "_calls",
        "_content",
        "_logprobs",
        "_pending",
        "_refusal",
        "done",
        "finish_reason",
        "size",
        "tokens",
    )

    def __init__(self) -> None:
        self._pending = b""
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._logprobs: list[float] = []
        self._calls: dict[int, list[str]] = {}
        self.finish_reason = ""
        self.tokens = 0
        self.size = 0
        #: `data: [DONE]` seen
        self.done = False

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_BYTES:
            return
        data = self._pending + chunk
        *events, self._pending = data.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._event(line[5:].strip())

    def _event(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        choices = document.get("choices") if isinstance(document, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self._delta(delta)
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        self._logprobs.extend(logprobs_of(choice.get("logprobs")))

    def _delta(self, delta: dict[str, Any]) -> None:
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._content.append(content)
            self.tokens += 1
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refusal.append(refusal)
            self.tokens += 1
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0)
                parts = self._calls.setdefault(index if isinstance(index, int) else 0, ["", ""])
                function = call.get("function")
                if isinstance(function, dict):
                    if isinstance(function.get("name"), str):
                        parts[0] += function["name"]
                    if isinstance(function.get("arguments"), str):
                        parts[1] += function["arguments"]

    def answer(self, complete: bool) -> Answer:
        """What was read so far; `complete`: the stream ended (every check applies)."""
        return Answer(
            content="".join(self._content),
            refusal="".join(self._refusal),
            finish_reason=self.finish_reason,
            tool_calls=tuple((name, args) for name, args in self._calls.values()),
            logprobs=tuple(self._logprobs),
            complete=complete,
        )


def with_logprobs(body: bytes) -> bytes | None:
    """The request body asking for logprobs (`request_logprobs`); None when it is no JSON
    object or asks already."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("logprobs") is True:
        return None
    document["logprobs"] = True
    return orjson.dumps(document)


def without_logprobs(document: Any) -> bytes | None:
    """A `chat.completion` with every choice's `logprobs` set to null (the client did not ask
    for them); None when there is nothing to strip."""
    choices = document.get("choices") if isinstance(document, dict) else None
    if not isinstance(choices, list):
        return None
    stripped = False
    for choice in choices:
        if isinstance(choice, dict) and choice.get("logprobs") is not None:
            choice["logprobs"] = None
            stripped = True
    return orjson.dumps(document) if stripped else None
