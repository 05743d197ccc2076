"""Response specs: what one `/v1/...` request gets (a status, Retry-After, delays, a reset) and,
for a normal answer, how the answer looks (finish_reason, a fixed content, a refusal).

Text form (`Fault.parse("429:2")`): `STATUS[:RETRY_AFTER][@DELAY_MS]` or `reset[@DELAY_MS]`.
Object form: `{"status": 429, "retry_after": 1, "delay_ms": 0, "reset": false}`, plus for a
status-200 answer `ttfb_ms`, `finish_reason`, `content` and `refusal`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "FINISH_REASONS",
    "MAX_DELAY_MS",
    "MAX_RETRY_AFTER",
    "MAX_STREAM_CHUNKS",
    "MAX_TEXT_CHARS",
    "NORMAL",
    "Fault",
    "FaultSpec",
]

MAX_DELAY_MS = 600_000
MAX_RETRY_AFTER = 86_400
MAX_STREAM_CHUNKS = 1_000
#: Longest fixed `content` or `refusal` text.
MAX_TEXT_CHARS = 1_000_000
#: The `finish_reason` values an answer may be given (OpenAI's).
FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "function_call")

_FAULT_RE = re.compile(
    r"(?:(?P<reset>reset)|(?P<status>\d{3})(?::(?P<retry>\d+))?)(?:@(?P<delay>\d+))?",
    re.ASCII,
)
_TRANSPORT_KEYS = ("status", "retry_after", "delay_ms", "reset")
_ANSWER_KEYS = ("ttfb_ms", "finish_reason", "content", "refusal")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Fault:
    """One injected response: a status (200 = a normal answer), Retry-After, a delay, or a reset.

    `reset` closes the connection after the delay without sending anything. The answer fields
    (`ttfb_ms`, `finish_reason`, `content`, `refusal`) shape a status-200 answer: `ttfb_ms` is
    one more wait before the response headers, `content` replaces the assistant text, `refusal`
    answers with `message.refusal` (and `content: null`) instead.
    """

    status: int = 200
    retry_after: int | None = None
    delay_ms: int = 0
    reset: bool = False
    ttfb_ms: int = 0
    finish_reason: str | None = None
    content: str | None = None
    refusal: str | None = None

    def __post_init__(self) -> None:
        if not (self.status == 200 or 400 <= self.status <= 599):
            raise ValueError(f"status must be 200 or 400..599, got {self.status}")
        if self.retry_after is not None and not 0 <= self.retry_after <= MAX_RETRY_AFTER:
            raise ValueError(f"retry_after must be 0..{MAX_RETRY_AFTER} seconds")
        if not 0 <= self.delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"delay_ms must be 0..{MAX_DELAY_MS}")
        if not 0 <= self.ttfb_ms <= MAX_DELAY_MS:
            raise ValueError(f"ttfb_ms must be 0..{MAX_DELAY_MS}")
        if self.finish_reason is not None and self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {', '.join(FINISH_REASONS)}")
        for name in ("content", "refusal"):
            text = getattr(self, name)
            if text is not None and len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"{name} is longer than {MAX_TEXT_CHARS} characters")
        if self.content is not None and self.refusal is not None:
            raise ValueError("content and refusal exclude each other")
        if self.has_answer_fields and (self.reset or self.status != 200):
            raise ValueError("ttfb_ms, finish_reason, content and refusal need status 200")

    @property
    def has_answer_fields(self) -> bool:
        """True when the answer differs from the default one (not only status and delays)."""
        return bool(self.ttfb_ms) or any(
            getattr(self, key) is not None for key in ("finish_reason", "content", "refusal")
        )

    @classmethod
    def parse(cls, spec: FaultSpec) -> Fault:
        """A `Fault` from `"503"`, `"429:2"`, `"200@1500"`, `"reset"`, 503, or a mapping."""
        if isinstance(spec, Fault):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"not a response spec: {spec!r}")
        if isinstance(spec, int):
            return cls(status=spec)
        if isinstance(spec, str):
            match = _FAULT_RE.fullmatch(spec.strip().lower())
            if match is None:
                raise ValueError(
                    f"not a response spec: {spec!r} (expected STATUS[:RETRY_AFTER][@DELAY_MS] "
                    "or reset[@DELAY_MS])"
                )
            delay = int(match["delay"]) if match["delay"] else 0
            if match["reset"]:
                return cls(reset=True, delay_ms=delay)
            retry = int(match["retry"]) if match["retry"] is not None else None
            return cls(status=int(match["status"]), retry_after=retry, delay_ms=delay)
        if isinstance(spec, Mapping):
            return cls._from_mapping(spec)
        raise ValueError(f"not a response spec: {spec!r}")

    @classmethod
    def _from_mapping(cls, spec: Mapping[str, Any]) -> Fault:
        unknown = set(spec) - {*_TRANSPORT_KEYS, *_ANSWER_KEYS}
        if unknown:
            raise ValueError(f"unknown response spec keys: {', '.join(sorted(unknown))}")
        status = spec.get("status", 200)
        retry_after = spec.get("retry_after")
        delay_ms = spec.get("delay_ms", 0)
        reset = spec.get("reset", False)
        ttfb_ms = spec.get("ttfb_ms", 0)
        ints_ok = all(_is_int(v) for v in (status, delay_ms, ttfb_ms))
        retry_ok = retry_after is None or _is_int(retry_after)
        texts = [spec.get(key) for key in ("finish_reason", "content", "refusal")]
        texts_ok = all(t is None or isinstance(t, str) for t in texts)
        if not (ints_ok and retry_ok and texts_ok and isinstance(reset, bool)):
            raise ValueError(f"bad response spec: {dict(spec)!r}")
        finish_reason, content, refusal = texts
        return cls(
            status=status,
            retry_after=retry_after,
            delay_ms=delay_ms,
            reset=reset,
            ttfb_ms=ttfb_ms,
            finish_reason=finish_reason,
            content=content,
            refusal=refusal,
        )

    def spec(self) -> str | dict[str, Any]:
        """The inverse of `parse`: the compact text form, or (when the answer fields are set,
        which the text form cannot carry) a mapping of the fields that differ from the default.
        """
        if self.has_answer_fields:
            default = Fault()
            return {
                f.name: getattr(self, f.name)
                for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)
            }
        text = "reset" if self.reset else str(self.status)
        if not self.reset and self.retry_after is not None:
            text += f":{self.retry_after}"
        if self.delay_ms:
            text += f"@{self.delay_ms}"
        return text


#: What `Fault.parse` accepts.
FaultSpec = Fault | str | int | Mapping[str, Any]

#: A normal answer.
NORMAL = Fault()
