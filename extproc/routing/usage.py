"""Read token usage out of an LLM answer as it streams past, without holding it back.

Pure and bounded: `ResponseMeter.feed(chunk)` per response body chunk, `end()` once. Two answer
shapes are recognised by their first bytes:

- **SSE** (`data: {...}` events, OpenAI `chat.completion.chunk`): only complete lines that
  mention `"usage"` are parsed; the last event with a non-null `usage` object wins (OpenAI sends
  it last when the request asked for `stream_options.include_usage`). At most one partial line
  is carried between chunks (capped).
- **JSON** (a plain `chat.completion`): kept up to `max_bytes` and parsed at the end; a larger
  answer keeps only its tail, where `usage` is, and reads the counts from there.

Token counts are read from `prompt_tokens`/`completion_tokens` (OpenAI) or
`input_tokens`/`output_tokens` (Anthropic-style); `None` when the answer carried no usage.
"""

from __future__ import annotations

import re

import orjson

#: Longest partial SSE line carried between chunks; a longer line is skipped.
MAX_LINE = 256 * 1024
#: Tail kept of a JSON answer larger than the meter's limit.
TAIL_BYTES = 64 * 1024

_TAIL_RE = {
    "in": re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d+)'),
    "out": re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d+)'),
}


class ResponseMeter:
    __slots__ = (
        "_buffer",
        "_kind",
        "_pending",
        "_truncated",
        "bytes",
        "chunks",
        "max_bytes",
        "model",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self, max_bytes: int = 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.chunks = 0
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        #: the `model` the answer names, when its usage was read
        self.model = ""
        self._kind = ""  # "", "sse" or "json"
        self._pending = b""
        self._buffer = bytearray()
        self._truncated = False

    @property
    def streamed(self) -> bool:
        return self._kind == "sse"

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.chunks += 1
        self.bytes += len(chunk)
        if not self._kind:
            head = chunk.lstrip()
            if not head:
                return
            # JSON starts with `{` or `[`; SSE with a field name or `:` (anything else: an
            # error text, read as SSE, where it has no usage and costs nothing)
            self._kind = "json" if head[:1] in (b"{", b"[") else "sse"
        if self._kind == "sse":
            self._feed_sse(chunk)
        else:
            self._feed_json(chunk)

    def end(self) -> None:
        """The answer is complete: read what is still buffered."""
        if self._kind == "sse":
            if self._pending:
                self._lines(self._pending)
                self._pending = b""
        elif self._kind == "json" and self._buffer:
            data = bytes(self._buffer)
            self._buffer = bytearray()
            if self._truncated:
                self._from_tail(data)
            else:
                try:
                    document = orjson.loads(data)
                except orjson.JSONDecodeError:
                    self._from_tail(data[-TAIL_BYTES:])
                else:
                    self._take(document)

    # -- SSE -------------------------------------------------------------------------------------

    def _feed_sse(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending = data if len(data) <= MAX_LINE else b""
            return
        self._pending = data[cut + 1 :] if len(data) - cut - 1 <= MAX_LINE else b""
        complete = data[: cut + 1]
        if b'"usage"' in complete:
            self._lines(complete)

    def _lines(self, data: bytes) -> None:
        for raw in data.split(b"\n"):
            if b'"usage"' not in raw:
                continue
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            self._take(event)

    # -- JSON ------------------------------------------------------------------------------------

    def _feed_json(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) > self.max_bytes:
            self._truncated = True
            del self._buffer[:-TAIL_BYTES]

    def _from_tail(self, data: bytes) -> None:
        found_in = _TAIL_RE["in"].findall(data)
        found_out = _TAIL_RE["out"].findall(data)
        if found_in:
            self.tokens_in = int(found_in[-1])
        if found_out:
            self.tokens_out = int(found_out[-1])

    # -- both --------------------------------------------------------------------------------------

    def _take(self, document: object) -> None:
        if not isinstance(document, dict):
            return
        usage = document.get("usage")
        if not isinstance(usage, dict):
            return
        tokens_in = _count(usage, "prompt_tokens", "input_tokens")
        tokens_out = _count(usage, "completion_tokens", "output_tokens")
        if tokens_in is None and tokens_out is None:
            return
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        model = document.get("model")
        if isinstance(model, str):
            self.model = model


def _count(usage: dict[str, object], *names: str) -> int | None:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
