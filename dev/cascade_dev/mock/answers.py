"""Pure builders of the mock's answers: `chat.completion` objects, `chat.completion.chunk` events,
usage and logprobs. No I/O; the same inputs always give the same output (but for `created`).

The mock's tokenizer counts one token per four characters for `usage`. For `logprobs` the text is
cut at every space (a token starts with its space, as in BPE vocabularies) and each piece into
tokens of at most four characters, so the streamed pieces, which are cut at spaces, always hold
whole tokens; the number of logprob tokens can therefore exceed `completion_tokens` a little.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "MAX_TOP_LOGPROBS",
    "Reply",
    "completion",
    "content_chars",
    "default_text",
    "error_body",
    "logprob_entries",
    "logprob_tokens",
    "split",
    "stream_events",
    "tokens",
    "usage",
]

#: The most alternatives `top_logprobs` may ask for (as with OpenAI).
MAX_TOP_LOGPROBS = 20
#: Alternatives offered in `top_logprobs`, after the chosen token (more than MAX_TOP_LOGPROBS).
_VOCABULARY = (
    " the", " a", " and", " of", " to", " is", " in", " it", " that", " for", " on", " with",
    " as", " this", " be", " at", " by", " or", " an", " not", ".", ",", " mock", " answer",
)  # fmt: skip


def error_body(message: str, kind: str, code: str | int | None = None) -> bytes:
    """An OpenAI-style error object."""
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def content_chars(messages: list[Any]) -> int:
    """Characters of all message contents, text parts of multi-part contents included."""
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars


def tokens(chars: int) -> int:
    """The mock's tokenizer: one token per four characters, at least one."""
    return max(1, math.ceil(chars / 4))


def usage(prompt_chars: int, reply: str) -> dict[str, int]:
    prompt = tokens(prompt_chars)
    completion_tokens = tokens(len(reply))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def split(text: str, pieces: int) -> list[str]:
    """`text` cut at spaces into at most `pieces` parts whose concatenation is `text`."""
    words = text.split(" ")
    count = max(1, min(pieces, len(words)))
    bounds = [len(words) * i // count for i in range(count + 1)]
    parts = [" ".join(words[bounds[i] : bounds[i + 1]]) for i in range(count)]
    return [parts[0]] + [" " + p for p in parts[1:]]


def default_text(name: str, model: str, messages: int, chars: int) -> str:
    """The assistant text when none is chosen: it names the backend first."""
    return (
        f"[{name}] mock answer from backend {name} for model {model}: "
        f"{messages} message(s), {chars} characters."
    )


# -- logprobs -----------------------------------------------------------------------------------


def logprob_tokens(text: str) -> list[str]:
    """`text` cut before every space, then into pieces of at most four characters."""
    out: list[str] = []
    start = 0
    for end in range(1, len(text) + 1):
        if end == len(text) or text[end] == " ":
            segment = text[start:end]
            out.extend(segment[i : i + 4] for i in range(0, len(segment), 4))
            start = end
    return out


def _unit(*parts: str) -> float:
    """A number in [0, 1) fixed by `parts`."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def logprob_entries(words: list[str], first: int, top: int) -> list[dict[str, Any]]:
    """OpenAI `logprobs.content` entries for `words`, the tokens from position `first` on.

    The chosen token is always the likeliest (greedy decoding): `top_logprobs` lists it first,
    then `top - 1` alternatives with strictly lower logprobs. Each value depends only on the
    token and its position, so a streamed answer's entries equal the plain answer's.
    """
    entries = []
    for offset, token in enumerate(words):
        position = str(first + offset)
        chance = 1 - 0.95 * _unit("p", position, token) ** 2  # in (0.05, 1]
        entry = _entry(token, round(math.log(chance), 6))
        room = max(min(chance, 1 - chance), 1e-6)
        start = int(_unit("alt", position, token) * len(_VOCABULARY))
        alternatives: list[dict[str, Any]] = []
        for step in range(len(_VOCABULARY)):
            if len(alternatives) >= top - 1:
                break
            candidate = _VOCABULARY[(start + step) % len(_VOCABULARY)]
            if candidate != token:
                share = room * 0.5 ** (len(alternatives) + 1)
                alternatives.append(_entry(candidate, round(math.log(share), 6)))
        chosen = [_entry(token, entry["logprob"])] if top else []
        entry["top_logprobs"] = chosen + alternatives
        entries.append(entry)
    return entries


def _logprobs(words: list[str], first: int, top: int, *, refusal: bool) -> dict[str, Any]:
    entries = logprob_entries(words, first, top)
    return (
        {"content": None, "refusal": entries} if refusal else {"content": entries, "refusal": None}
    )


# -- answers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the assistant answers."""

    text: str  #: the content, or the refusal text when `refusal`
    refusal: bool = False  #: answer with `message.refusal` (content null)
    finish_reason: str = "stop"
    top_logprobs: int | None = None  #: None: no logprobs asked for; else alternatives per token


def completion(
    *, completion_id: str, created: int, model: str, reply: Reply, prompt_chars: int
) -> dict[str, Any]:
    """A `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.refusal:
        message = {"role": "assistant", "content": None, "refusal": reply.text}
    logprobs = None
    if reply.top_logprobs is not None:
        words = logprob_tokens(reply.text)
        logprobs = _logprobs(words, 0, reply.top_logprobs, refusal=reply.refusal)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": usage(prompt_chars, reply.text),
    }


def stream_events(
    *,
    completion_id: str,
    created: int,
    model: str,
    reply: Reply,
    prompt_chars: int,
    chunks: int,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` events of a streamed answer, `[DONE]` not included: a role
    event, the text in at most `chunks` pieces (each with its tokens' logprobs when asked for),
    a `finish_reason` event, and the usage event when `include_usage` (then every other event
    has `"usage": null`)."""
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    usage_null = {"usage": None} if include_usage else {}

    def event(delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**base, "choices": [choice], **usage_null}

    role: dict[str, Any] = {"role": "assistant", "content": ""}
    if reply.refusal:
        role = {"role": "assistant", "content": None, "refusal": ""}
    events = [event(role, None)]
    key = "refusal" if reply.refusal else "content"
    first = 0
    for piece in split(reply.text, chunks):
        logprobs = None
        if reply.top_logprobs is not None:
            words = logprob_tokens(piece)
            logprobs = _logprobs(words, first, reply.top_logprobs, refusal=reply.refusal)
            first += len(words)
        events.append(event({key: piece}, None, logprobs))
    events.append(event({}, reply.finish_reason))
    if include_usage:
        events.append({**base, "choices": [], "usage": usage(prompt_chars, reply.text)})
    return events
