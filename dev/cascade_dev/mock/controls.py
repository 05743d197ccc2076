"""Per-request controls, read from `x-mock-*` request headers and from the request body.

Every function raises ValueError on a bad value; the backend answers that with 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cascade_dev.mock.answers import MAX_TOP_LOGPROBS
from cascade_dev.mock.faults import (
    FINISH_REASONS,
    MAX_DELAY_MS,
    MAX_STREAM_CHUNKS,
    MAX_TEXT_CHARS,
    NORMAL,
    Fault,
)

__all__ = ["Controls", "attempt", "int_header", "request_controls", "top_logprobs"]


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def int_header(headers: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if not _is_digits(value.strip()) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return int(value)


def attempt(headers: Mapping[str, str]) -> int:
    """`x-envoy-attempt-count`, else 1."""
    value = headers.get("x-envoy-attempt-count", "").strip()
    return int(value) if _is_digits(value) and int(value) >= 1 else 1


def _text_header(headers: Mapping[str, str], name: str) -> str | None:
    """A free-text header; its bytes (kept as latin-1 characters) read as UTF-8."""
    value = headers.get(name)
    if value is None:
        return None
    text = value.encode("latin-1").decode("utf-8", "replace")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} is longer than {MAX_TEXT_CHARS} characters")
    return text


def _header_fault(headers: Mapping[str, str], backend: str, attempt: int) -> Fault | None:
    """`x-mock-fail-<name>` (this backend only), else `x-mock-fail`; bounded by
    `x-mock-fail-attempts` when present."""
    spec = headers.get(f"x-mock-fail-{backend.lower()}")
    if spec is None:
        spec = headers.get("x-mock-fail")
    if spec is None:
        return None
    fault = Fault.parse(spec)
    limit = int_header(headers, "x-mock-fail-attempts", 0, 1_000_000)
    if limit is not None and attempt > limit:
        return None
    return fault


def _answer_changes(headers: Mapping[str, str]) -> dict[str, Any]:
    """The answer fields set by `x-mock-ttfb-ms`, `x-mock-finish-reason`, `x-mock-content` and
    `x-mock-refusal` (a content header drops a scripted refusal, and the other way round)."""
    changes: dict[str, Any] = {}
    ttfb = int_header(headers, "x-mock-ttfb-ms", 0, MAX_DELAY_MS)
    if ttfb is not None:
        changes["ttfb_ms"] = ttfb
    finish = headers.get("x-mock-finish-reason")
    if finish is not None:
        finish = finish.strip().lower()
        if finish not in FINISH_REASONS:
            raise ValueError(f"x-mock-finish-reason must be one of {', '.join(FINISH_REASONS)}")
        changes["finish_reason"] = finish
    content = _text_header(headers, "x-mock-content")
    refusal = _text_header(headers, "x-mock-refusal")
    if content is not None and refusal is not None:
        raise ValueError("x-mock-content and x-mock-refusal exclude each other")
    if content is not None:
        changes.update(content=content, refusal=None)
    if refusal is not None:
        changes.update(refusal=refusal, content=None)
    return changes


@dataclass(frozen=True)
class Controls:
    """How to answer one `/v1/...` request."""

    fault: Fault
    stream_delay_ms: int | None  #: None: the backend's default
    stream_chunks: int | None  #: None: the backend's default


def request_controls(
    headers: Mapping[str, str], *, backend: str, attempt: int, scripted: Fault | None
) -> Controls:
    """The failure header (which wins over the script entry), else the script entry, else a
    normal answer; then `x-mock-delay-ms` and, for a normal answer, the answer headers."""
    fault = _header_fault(headers, backend, attempt) or scripted or NORMAL
    delay_ms = int_header(headers, "x-mock-delay-ms", 0, MAX_DELAY_MS)
    stream_delay_ms = int_header(headers, "x-mock-stream-delay-ms", 0, MAX_DELAY_MS)
    chunks = int_header(headers, "x-mock-stream-chunks", 1, MAX_STREAM_CHUNKS)
    changes = _answer_changes(headers)
    if delay_ms is not None:
        fault = replace(fault, delay_ms=delay_ms)
    if changes and fault.status == 200 and not fault.reset:
        fault = replace(fault, **changes)
    return Controls(fault, stream_delay_ms, chunks)


def top_logprobs(payload: Mapping[str, Any]) -> int | None:
    """None unless the body asks `"logprobs": true`; then `top_logprobs` (0..20, default 0)."""
    if payload.get("logprobs") is not True:
        return None
    top = payload.get("top_logprobs")
    if top is None:
        return 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}")
    return top
