"""Labelling sheets as CSV: writing a sample (`sample`) for labellers, reading it back.

What the labeller fills in (`label`, `note`) comes first; how the row was drawn and how the
router decided it next (left out of a blind sheet, so it cannot anchor the labeller); what the
tools need to read the sheet back (weight, sizes, the messages as JSON) last. A labelled sheet
read back gives labelled-data records, as `cascade eval` and `cascade tune` take them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import orjson

from extproc.tuning.dataset import Record
from extproc.tuning.sample import SampleResult

TEXT_LIMIT = 2000
#: What the labeller fills in comes first; what the tools need to read the sheet back last.
LABEL_COLUMNS = ("id", "text", "label", "note")
#: How the row was drawn and how the router decided it (left out of a blind sheet).
DECISION_COLUMNS = ("stratum", "decided_tier", "decided_by", "rule", "keywords")
META_COLUMNS = ("weight", "chars", "message_count", "suspect")


def _display_text(record: Record) -> str:
    if record.chat is None:
        return ""
    text = "\n".join(f"[{role}] {content}" for role, content in record.chat.messages)
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def write_sheet(
    result: SampleResult, stream: IO[str], segment: str | None, *, blind: bool = False
) -> None:
    """The labelling sheet, rows in random order; `label` and `note` are left empty.

    `blind` leaves out the router's decision (and the stratum, which names it), so that it
    cannot anchor the labeller; the logged decision then cannot be scored from the sheet.
    """
    decision = () if blind else DECISION_COLUMNS
    extra = (segment,) if segment else ()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*LABEL_COLUMNS, *decision, *META_COLUMNS, *extra, "messages_json"])
    for row in sorted(result.rows, key=lambda r: r.item.key):
        item = row.item
        record = item.record
        messages = ""
        if record.chat is not None:
            messages = orjson.dumps(
                [{"role": r, "content": t} for r, t in record.chat.messages]
            ).decode()
        count = record.number("messages") if record.chat is None else len(record.chat.messages)
        decided = [row.stratum, item.tier, item.decided_by, item.rule, item.keywords]
        meta = [
            f"{row.weight:.4g}",
            item.chars,
            "" if count is None else int(count),
            item.suspect,
        ]
        writer.writerow(
            [
                record.id,
                _display_text(record),
                "",
                "",
                *([] if blind else decided),
                *meta,
                *(item.segment or "" for _ in extra),
                messages,
            ]
        )


def sheet_text(result: SampleResult, segment: str | None, *, blind: bool = False) -> str:
    buffer = io.StringIO()
    write_sheet(result, buffer, segment, blind=blind)
    return buffer.getvalue()


@dataclass(slots=True)
class SheetReadback:
    records: list[dict[str, Any]]
    unlabelled: int
    invalid: list[tuple[str, str]]  # (id, label)
    labels: dict[str, int]


def read_sheet(records: Iterable[Record], tiers: Sequence[str]) -> SheetReadback:
    """Labelled rows of a sheet as labelled-data records (JSON objects)."""
    out: list[dict[str, Any]] = []
    unlabelled = 0
    invalid: list[tuple[str, str]] = []
    labels: dict[str, int] = {}
    for record in records:
        if record.label is None:
            unlabelled += 1
            continue
        if record.label not in tiers:
            invalid.append((record.id, record.label))
            continue
        labels[record.label] = labels.get(record.label, 0) + 1
        out.append(_labelled(record))
    return SheetReadback(out, unlabelled, invalid, labels)


def _labelled(record: Record) -> dict[str, Any]:
    data: dict[str, Any] = {"id": record.id}
    if record.chat is not None:
        data["messages"] = [{"role": r, "content": t} for r, t in record.chat.messages]
    data["label"] = record.label
    for name, value in record.data.items():
        if name in ("id", "label", "text", "messages_json", "messages") or value in (None, ""):
            continue
        if name in ("weight", "chars", "message_count"):
            number = record.number(name)
            data[name] = (
                value if number is None else (int(number) if number.is_integer() else number)
            )
        else:
            data[name] = value
    if data.get("decided_by") == "logged" and "decided_tier" in data:
        data["tier"] = data["decided_tier"]
    return data


def jsonl_lines(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    for item in items:
        yield orjson.dumps(item) + b"\n"
