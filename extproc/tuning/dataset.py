"""Streaming reader of the tuning tools' inputs: labelled JSONL, decision logs, CSV sheets.

One `Record` per input record, read lazily, so a file of any size is read in constant memory.
Accepted, by file name:

- `*.jsonl`, `*.ndjson`, `*.json` (one object per line) and the same with `.gz`; `-` is stdin.
- `*.csv` (and `.csv.gz`): a labelling sheet as `cascade sample` writes it, or any CSV with an
  `id`, a `label` and either `messages_json` or `text` column.

The text of a record comes from the first of: `messages` (a list of chat messages, the labelled
data format), `messages_json` (the same list as a JSON string, in sheets), `messages_text` or
`prompt` (present in a decision log only when text logging is enabled), `text` (a CSV column).
Records without text are still read: `cascade sample` uses their logged decision (`tier`,
`rule`, `chars`, ...), the other commands skip them and say how many they skipped.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson

from extproc.core.chat import ChatRequest, chat_from_document
from extproc.core.errors import ChatParseError

#: Fields of a record the tools read by name.
ID_FIELD = "id"
LABEL_FIELD = "label"
TEXT_FIELDS = ("messages", "messages_json", "messages_text", "prompt", "text")

_TRUE = {"1", "true", "yes", "y", "t"}


@dataclass(slots=True)
class Record:
    """One input record: its text as a chat request (when it has text) and its raw fields."""

    #: 0-based position in the input.
    index: int
    id: str
    chat: ChatRequest | None
    #: Normalised label (stripped, lower case) or None when unlabelled.
    label: str | None
    data: Mapping[str, Any]

    def get(self, path: str) -> object:
        """A field by dotted path (`evidence.domain`), or None when absent."""
        return get_field(self.data, path)

    def number(self, path: str) -> float | None:
        return as_number(self.get(path))

    def flag(self, path: str) -> bool:
        value = self.get(path)
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return value.strip().lower() in _TRUE
        return isinstance(value, int | float) and value != 0

    @property
    def logged_tier(self) -> str | None:
        """The tier a decision log recorded for this request, if any."""
        value = self.data.get("tier")
        if value is None and self.data.get("decided_by") == "logged":
            value = self.data.get("decided_tier")  # a labelling sheet made from a log
        return value if isinstance(value, str) and value else None

    @property
    def tokens_in(self) -> float | None:
        found = self.number("tokens_in")
        return found if found is not None else self.number("usage.prompt_tokens")

    @property
    def tokens_out(self) -> float | None:
        found = self.number("tokens_out")
        return found if found is not None else self.number("usage.completion_tokens")


@dataclass(slots=True)
class ReadStats:
    """What a read saw besides good records; filled in while iterating."""

    records: int = 0
    invalid: int = 0
    without_text: int = 0
    bad_messages: int = 0
    first_problem: str = ""

    def problem(self, where: str, message: str) -> None:
        if not self.first_problem:
            self.first_problem = f"{where}: {message}"

    def summary(self) -> str:
        """One line for stderr, or "" when nothing was skipped."""
        parts = []
        if self.invalid:
            parts.append(f"{self.invalid} unreadable")
        if self.bad_messages:
            parts.append(f"{self.bad_messages} with unusable messages")
        if not parts:
            return ""
        return f"skipped {', '.join(parts)} (first: {self.first_problem})"


def get_field(data: Mapping[str, Any], path: str) -> object:
    if "." not in path:  # the common case, one lookup
        return data.get(path)
    value: object = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def read_records(path: str | Path, stats: ReadStats | None = None) -> Iterator[Record]:
    """Yield the records of a file (or `-` for stdin), lazily, in file order."""
    stats = stats if stats is not None else ReadStats()
    name = str(path)
    is_csv = name.removesuffix(".gz").lower().endswith(".csv")
    with _open_binary(name) as stream:
        if is_csv:
            text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
            yield from _read_csv(text, stats)
        else:
            yield from _read_jsonl(stream, stats)


def _open_binary(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    if name.lower().endswith(".gz"):
        return cast("IO[bytes]", gzip.open(name, "rb"))
    return open(name, "rb")  # closed by the caller's `with`


def _read_jsonl(stream: IO[bytes], stats: ReadStats) -> Iterator[Record]:
    index = 0
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            stats.invalid += 1
            stats.problem(f"line {lineno}", f"not JSON ({exc})")
            continue
        if not isinstance(data, dict):
            stats.invalid += 1
            stats.problem(f"line {lineno}", "not a JSON object")
            continue
        record = make_record(index, data, stats, f"line {lineno}")
        index += 1
        yield record


def _read_csv(stream: IO[str], stats: ReadStats) -> Iterator[Record]:
    csv.field_size_limit(1 << 30)
    reader = csv.DictReader(stream)
    for index, row in enumerate(reader):
        data = {key: value for key, value in row.items() if key is not None}
        yield make_record(index, data, stats, f"row {index + 2}")


def make_record(index: int, data: Mapping[str, Any], stats: ReadStats, where: str) -> Record:
    """Build a record from a decoded JSON object or CSV row (also used by tests)."""
    stats.records += 1
    raw_id = data.get(ID_FIELD)
    record_id = str(raw_id) if raw_id not in (None, "") else f"#{index + 1}"
    raw_label = data.get(LABEL_FIELD)
    label = (raw_label.strip().lower() or None) if isinstance(raw_label, str) else None
    chat = _chat(data, stats, where)
    if chat is None:
        stats.without_text += 1
    return Record(index=index, id=record_id, chat=chat, label=label, data=data)


def _chat(data: Mapping[str, Any], stats: ReadStats, where: str) -> ChatRequest | None:
    messages: object = None
    for field in TEXT_FIELDS:
        value = data.get(field)
        if value is None or value == "":
            continue
        if field == "messages" and not isinstance(value, list):
            continue  # a decision log's message count
        messages = _as_messages(field, value)
        break
    if messages is None:
        return None
    chat = chat_from_document({"messages": messages})
    if isinstance(chat, ChatParseError):
        stats.bad_messages += 1
        stats.problem(where, str(chat))
        return None
    return chat


def _as_messages(field: str, value: object) -> object:
    if field == "messages_json" and isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return "unparseable messages_json"
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [{"role": "user", "content": item} for item in value]
    return value
