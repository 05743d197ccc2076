"""extproc/app/logs.py: whatever a client puts into a logged value, a record stays one line, the
JSON format parses with only its own keys, and the attacker's text comes back as a value."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from extproc.app.logs import (
    CORE_KEYS,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    escape,
)

ATTACKS = {
    "quote": 'abc","level":"CRITICAL","logger":"root","message":"forged',
    "newline": 'abc\n{"time":"x","level":"CRITICAL","logger":"x","message":"forged"}',
    "crlf": "abc\r\n2026-01-01T00:00:00.000Z CRITICAL root: forged",
    "cr": "abc\rCRITICAL overwritten",
    "ansi": "\x1b[2J\x1b[31mred\x1b[0m",
    "nul": "a\x00b",
    "controls": "\x01\x07\x08\x0b\x0c\x1b\x7f",
    # str.splitlines() breaks on these too; a log shipper may as well
    "separators": "a\x1cb\x1dc\x1ed\x85e\u2028f\u2029g",
    "surrogates": "\udcff\ud800 lone halves, as os.fsdecode makes of bad bytes",
    "backslashes": "C:\\new\\table \\x41 \\u0041",
    "unicode": "리팩터 重构 ✓",
}
FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("extproc.test", logging.INFO, __file__, 1, msg, args or None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def assert_one_safe_line(line: str) -> None:
    assert line.splitlines() == [line], repr(line)
    assert not CONTROL.search(line), repr(line)
    line.encode("utf-8")  # strict: no lone surrogate reaches the stream


def parse(line: str) -> dict[str, object]:
    assert_one_safe_line(line)
    assert line.isascii()
    payload = json.loads(line)
    assert isinstance(payload, dict)
    return payload


def unescape(text: str) -> str:
    """Inverse of `escape` for ASCII output (what every attack above escapes to, but unicode)."""
    return text.encode("ascii").decode("unicode_escape")


# -- JSON -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_json_attack_in_the_message(attack: str) -> None:
    payload = parse(JsonFormatter().format(record("request " + attack)))
    assert list(payload) == list(CORE_KEYS)
    assert payload["message"] == "request " + attack
    assert payload["level"] == "INFO"
    assert payload["logger"] == "extproc.test"


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_json_attack_in_the_arguments(attack: str) -> None:
    payload = parse(
        JsonFormatter().format(record("fallback %s -> %s (request %s)", "a", "b", attack))
    )
    assert list(payload) == list(CORE_KEYS)
    assert payload["message"] == f"fallback a -> b (request {attack})"
    assert payload["level"] == "INFO"


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_json_attack_in_extras_and_exceptions(attack: str) -> None:
    try:
        raise ValueError(attack)
    except ValueError:
        exc_info = sys.exc_info()
    rec = record("failed", request_id=attack)
    rec.exc_info = exc_info
    payload = parse(JsonFormatter().format(rec))
    assert list(payload) == [*CORE_KEYS, "exception", "request_id"]
    assert payload["request_id"] == attack
    assert isinstance(payload["exception"], str)
    assert payload["exception"].startswith("Traceback")
    assert payload["exception"].endswith("ValueError: " + attack)


def test_json_extras_never_replace_core_fields() -> None:
    rec = record("x", level="CRITICAL", logger="root", time="yesterday")
    payload = parse(JsonFormatter().format(rec))
    assert payload["level"] == "INFO"
    assert payload["logger"] == "extproc.test"
    assert payload["time"] != "yesterday"
    assert payload["extra_level"] == "CRITICAL"
    assert payload["extra_logger"] == "root"
    assert payload["extra_time"] == "yesterday"


def test_json_values_the_encoder_refuses_become_text() -> None:
    loop: list[object] = []
    loop.append(loop)
    payload = parse(
        JsonFormatter().format(record("x", cycle=loop, keys={(1, 2): "t"}, obj=object()))
    )
    assert payload["cycle"] == "[[...]]"
    assert payload["keys"] == "{(1, 2): 't'}"
    assert str(payload["obj"]).startswith("<object object")


def test_json_time_is_utc_iso8601() -> None:
    rec = record("x")
    rec.created, rec.msecs = 1_767_225_600.25, 250.0
    assert parse(JsonFormatter().format(rec))["time"] == "2026-01-01T00:00:00.250Z"


# -- text -----------------------------------------------------------------------------------------

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO extproc\.test: (?P<rest>.*)$")


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_text_attack_in_the_message_and_arguments(attack: str) -> None:
    for rec in (record("request " + attack), record("request %s", attack)):
        line = TextFormatter().format(rec)
        assert_one_safe_line(line)
        match = TEXT_LINE.match(line)
        assert match, line
        if attack.isascii() or not attack.isprintable():
            assert unescape(match["rest"]) == "request " + attack
        else:  # printable non-ASCII text stays readable
            assert match["rest"] == "request " + attack


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_text_attack_in_extras_and_exceptions(attack: str) -> None:
    try:
        raise ValueError(attack)
    except ValueError:
        exc_info = sys.exc_info()
    rec = record("failed", request_id=attack)
    rec.exc_info = exc_info
    line = TextFormatter().format(rec)
    assert_one_safe_line(line)
    match = TEXT_LINE.match(line)
    assert match, line
    # `key="value"`: a quote in the value is escaped, so it cannot end the field early
    fields = re.fullmatch(
        r'failed request_id="((?:[^"\\]|\\.)*)" exception="((?:[^"\\]|\\.)*)"', match["rest"]
    )
    assert fields, match["rest"]
    assert escape(attack).replace('"', '\\"') == fields[1]
    assert fields[2].startswith("Traceback")


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\t", "\\t"),
        ("\x00\x1b\x7f\x85", "\\x00\\x1b\\x7f\\x85"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\udcff", "\\udcff"),
        ("back\\slash", "back\\\\slash"),
        ("리팩터 ✓", "리팩터 ✓"),
        ('"quoted"', '"quoted"'),
    ],
)
def test_escape(value: str, escaped: str) -> None:
    assert escape(value) == escaped


# -- configure_logging, the whole path to the stream ----------------------------------------------


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("fmt", FORMATTERS)
def test_every_record_is_one_line_on_the_stream(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, stream)
    logger = logging.getLogger("extproc.test.stream")
    for attack in ATTACKS.values():
        logger.info("request %s", attack)
        logger.warning(attack, extra={"request_id": attack})
    try:
        raise RuntimeError(ATTACKS["newline"])
    except RuntimeError:
        logger.exception("handler failed (request %s)", ATTACKS["quote"])
    logger.info("bad arguments %d", "not a number")
    logger.debug("not shown")
    lines = stream.getvalue().split("\n")
    assert lines.pop() == ""  # the stream ends with the last record's newline
    assert len(lines) == 2 * len(ATTACKS) + 2
    for line in lines:
        assert_one_safe_line(line)
        if fmt == "json":
            parse(line)
    assert "bad arguments %d" in lines[-1]
    assert "not shown" not in stream.getvalue()


@pytest.mark.usefixtures("restore_root")
def test_configure_logging_replaces_earlier_handlers_and_rejects_unknown_formats() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "text", first)
    configure_logging("warning", "json", second)
    logging.getLogger("extproc.test").warning("once")
    logging.getLogger("extproc.test").info("filtered")
    assert first.getvalue() == ""
    assert [json.loads(x)["message"] for x in second.getvalue().splitlines()] == ["once"]
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", io.StringIO())


def test_the_checks_catch_a_templated_format() -> None:
    """The old `--log-format json` (a %-template) fails these checks: they can fail."""
    template = logging.Formatter(
        '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
    )
    with pytest.raises((AssertionError, ValueError)):
        parse(template.format(record("request %s", ATTACKS["newline"])))
    forged = json.loads(template.format(record("request %s", ATTACKS["quote"])))
    assert forged["level"] == "CRITICAL"  # what the escaping prevents
