"""Log records that a client cannot forge: one record is one line, every value escaped.

Request ids, header values, attribute text and exception messages reach the logs, and a client
chooses them. A line built by string templating lets `x-request-id: abc","level":"CRITICAL"`
add fields and a newline add whole records. Here:

- `JsonFormatter` writes one JSON object per line through the stdlib `json` encoder with
  `ensure_ascii`: quotes, backslashes, every control character, U+2028/U+2029 and lone
  surrogates come out as escapes, so the line is plain ASCII and parses back to the same text.
  Keys: `time`, `level`, `logger`, `message`, then `exception` / `stack` when present, then the
  record's extras (`logger.info(..., extra={...})`).
- `TextFormatter` writes `time level logger: message` with each of those values escaped the way
  `repr` escapes a string (`\\n`, `\\r`, `\\t`, `\\x1b`, `\\udcff`, and a backslash doubled),
  extras as `key="value"`. Printable text, including non-ASCII, stays as it is.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
#: the keys every JSON record has, in this order
CORE_KEYS = ("time", "level", "logger", "message")

#: attributes every `LogRecord` has; anything else on a record came from `extra=`
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

#: what the text format escapes: C0 controls, DEL, C1 controls, the backslash itself, the two
#: Unicode line separators and lone surrogates (not encodable, and not text)
_UNSAFE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\\\\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(value: object) -> str:
    """`str(value)` with control characters, separators and surrogates escaped; one line."""
    return _UNSAFE.sub(_escape_char, _text(value))


def _quote(value: object) -> str:
    return '"' + escape(value).replace('"', '\\"') + '"'


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not cost the record
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def _message(record: logging.LogRecord) -> str:
    """The interpolated message; a mismatch of format and arguments keeps both, not the line."""
    try:
        return record.getMessage()
    except Exception as exc:
        return f"{_text(record.msg)} <bad log arguments {record.args!r}: {type(exc).__name__}>"


def _timestamp(record: logging.LogRecord) -> str:
    """UTC, ISO 8601 with milliseconds: 2026-01-31T12:00:00.123Z."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields `extra=` added to the record, by name."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=True, default=_text, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, every value escaped by the `json` encoder."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        for key, value in extras(record).items():
            # An extra never replaces a core field: `extra={"level": ...}` becomes `extra_level`.
            name = f"extra_{key}" if key in payload else key
            payload[name] = value
        try:
            return _dumps(payload)
        except (TypeError, ValueError):  # extras the encoder refuses (cycles, non-str keys)
            return _dumps({k: v if k in CORE_KEYS else _text(v) for k, v in payload.items()})


class TextFormatter(logging.Formatter):
    """`time level logger: message key="value"`, each value escaped, always one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record),
            escape(record.levelname),
            escape(record.name) + ":",
            escape(_message(record)),
        ]
        for key, value in extras(record).items():
            parts.append(f"{escape(key)}={_quote(value)}")
        if record.exc_info:
            parts.append("exception=" + _quote(self.formatException(record.exc_info)))
        elif record.exc_text:
            parts.append("exception=" + _quote(record.exc_text))
        if record.stack_info:
            parts.append("stack=" + _quote(self.formatStack(record.stack_info)))
        return " ".join(parts)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Send every record of the process to `stream` (stderr) in `fmt`, at `level` and above.

    Replaces the root logger's handlers (an earlier `basicConfig` included), routes `warnings`
    through logging, and returns the handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    return handler
