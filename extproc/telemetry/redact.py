"""The redaction hook applied to any text the server records (prompts, feedback comments).

Text is recorded only when `telemetry.capture_prompts` is on; even then it first goes through
`telemetry.redact`: `builtin` (below), `none`, or `module:function` naming any callable that
takes and returns a string (e.g. a company's PII scrubber).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

Redactor = Callable[[str], str]

_BUILTIN = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"(?i)\b(?:bearer|basic)\s+[\w.~+/=-]{8,}"), "[credential]"),
    (re.compile(r"\b(?:sk|pk|rk|ghp|gho|xox[abp])[-_][\w-]{12,}"), "[key]"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[key]"),
    (re.compile(r"\b[A-Za-z0-9+/_-]{32,}={0,2}"), "[token]"),
    (re.compile(r"\d(?:[ -]?\d){8,}"), "[number]"),
]


def builtin_redact(text: str) -> str:
    """Mask e-mail addresses, credentials and key-like tokens, and runs of 9+ digits."""
    for pattern, replacement in _BUILTIN:
        text = pattern.sub(replacement, text)
    return text


def no_redact(text: str) -> str:
    return text


def load_redactor(spec: str) -> Redactor:
    """`builtin`, `none` or `module:function`; raises ImportError/AttributeError/TypeError."""
    if spec == "builtin":
        return builtin_redact
    if spec == "none":
        return no_redact
    module_name, _, attribute = spec.partition(":")
    function = getattr(importlib.import_module(module_name), attribute)
    if not callable(function):
        raise TypeError(f"{spec} is not callable")
    return function  # type: ignore[no-any-return]
