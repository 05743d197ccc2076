"""Labelling sheets: stratified, seeded, order-independent; the CSV round trip."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

from extproc.config.snapshot import Snapshot
from extproc.tuning.dataset import read_records
from extproc.tuning.sample import SampleOptions, feedback_suspects, sample
from extproc.tuning.sheet import read_sheet, sheet_text
from tests.unit.tuning_data import chat, records


def traces(n: int = 400) -> list[dict[str, Any]]:
    """A decision log: 95 % weak, a few suspects, a rare source, a long tail."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        tier = "strong" if i % 20 == 0 else "weak"
        out.append(
            {
                "id": f"req-{i}",
                "time": "2026-11-20T10:00:00Z",
                "tier": tier,
                "classifier": "v7",
                "rule": "keyword" if tier == "strong" else "default",
                "keywords": ["refactor"] if tier == "strong" else [],
                "chars": rng.randint(10, 400) if i % 50 else 5000,
                "bytes": 0,
                "messages": 2,
                "source": "batch" if i % 40 == 1 else "ide",
                "fn_suspect": i % 97 == 3,
                "fp_suspect": False,
            }
        )
    return out


def options(**kwargs: Any) -> SampleOptions:
    return SampleOptions(**{"n": 40, "seed": 1, **kwargs})


def test_sample_is_reproducible_and_order_independent(default_snapshot: Snapshot) -> None:
    clf = default_snapshot.classifiers["v7"]
    items = traces()
    first = sample(records(items), options(), clf)
    again = sample(records(items), options(), clf)
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    reordered = sample(records(shuffled), options(), clf)
    other = sample(records(items), options(seed=2), clf)
    ids = [r.item.record.id for r in first.rows]
    assert len(ids) == 40 == len(set(ids))
    assert ids == [r.item.record.id for r in again.rows]
    assert sorted(ids) == sorted(r.item.record.id for r in reordered.rows)
    assert sorted(ids) != sorted(r.item.record.id for r in other.rows)


def test_sample_strata_oversample_the_tail_and_the_minority_tier(
    default_snapshot: Snapshot,
) -> None:
    result = sample(records(traces()), options(), default_snapshot.classifiers["v7"])
    strata = [r.stratum for r in result.rows]
    # the tail's 12 rows (30 % of 40) go in equal parts to suspects, long and rare
    assert sum(1 for t in traces() if t["fn_suspect"]) == 5
    assert strata.count("suspect") == 4
    assert strata.count("long") == 4
    assert strata.count("rare:batch") == 4
    # the strong tier is 5 % of traffic but gets about half of the body rows
    assert strata.count("tier:strong") >= 10
    assert result.rare == ["batch"]
    # weights turn rows back into population counts
    total = sum(r.weight for r in result.rows)
    assert abs(total - 400) < 40


def test_sample_classifies_records_without_a_logged_tier(default_snapshot: Snapshot) -> None:
    items = [chat("please refactor this") for _ in range(5)] + [chat("hi") for _ in range(50)]
    result = sample(records(items), options(n=10, segment=None), default_snapshot.classifiers["v7"])
    decided = {r.item.tier for r in result.rows}
    assert decided == {"strong", "weak"}
    assert {r.item.decided_by for r in result.rows} == {"v7"}


def test_sheet_csv_round_trip(default_snapshot: Snapshot, tmp_path: Path) -> None:
    items = [
        chat(f"question {i}, 질문 {i}", source="ide" if i % 3 else "web", id=f"q{i}")
        for i in range(30)
    ]
    items[0]["messages"].insert(0, {"role": "system", "content": "=cmd|' /C calc'!A0"})
    result = sample(records(items), options(n=12), default_snapshot.classifiers["v7"])
    text = sheet_text(result, "source")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 12
    assert list(rows[0])[:4] == ["id", "text", "label", "note"]
    assert list(rows[0])[-1] == "messages_json"
    assert all(r["text"].startswith("[") for r in rows)  # never a spreadsheet formula
    for index, row in enumerate(rows):
        row["label"] = "strong" if index % 2 else "weak"
    rows[1]["label"] = "Strong "
    rows[2]["label"] = ""
    rows[3]["label"] = "maybe"
    sheet = tmp_path / "sheet.csv"
    with sheet.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    back = read_sheet(read_records(sheet), default_snapshot.tier_names)
    assert back.unlabelled == 1
    assert back.invalid == [(rows[3]["id"], "maybe")]
    assert len(back.records) == 10
    originals = {item["id"]: item for item in items}
    for data in back.records:
        assert data["messages"] == originals[data["id"]]["messages"]
        assert data["label"] in ("strong", "weak")
        assert isinstance(data["weight"], int | float) and data["weight"] >= 1
        assert data["source"] == originals[data["id"]]["source"]
    assert next(d for d in back.records if d["id"] == rows[1]["id"])["label"] == "strong"


def test_sheet_from_a_log_without_text_keeps_the_logged_tier(
    default_snapshot: Snapshot, tmp_path: Path
) -> None:
    result = sample(records(traces(60)), options(n=6), None)
    rows = list(csv.DictReader(io.StringIO(sheet_text(result, "source"))))
    assert all(r["decided_by"] == "logged" and r["messages_json"] == "" for r in rows)
    for row in rows:
        row["label"] = "weak"
    sheet = tmp_path / "s.csv"
    with sheet.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    back = read_sheet(read_records(sheet), default_snapshot.tier_names)
    assert all("messages" not in d and d["tier"] == d["decided_tier"] for d in back.records)
    assert {r.logged_tier for r in read_records(sheet)} <= {"weak", "strong"}


def test_feedback_records_flag_their_request_as_suspect(default_snapshot: Snapshot) -> None:
    log = traces(200)
    for item in log:
        item["fn_suspect"] = False
    feedback = [
        {"kind": "feedback", "id": f"req-{i}", "tier": "weak", "score": -1, "fn_suspect": True}
        for i in (5, 6, 7)
    ]
    items = [*log, *feedback]  # feedback comes after the request it judges
    flagged = feedback_suspects(records(items))
    assert flagged == {"req-5": "fn", "req-6": "fn", "req-7": "fn"}
    result = sample(records(items), options(n=40), None, flagged)
    suspects = sorted(r.item.record.id for r in result.rows if r.stratum == "suspect")
    assert suspects == ["req-5", "req-6", "req-7"]
    assert all(r.item.record.get("kind") != "feedback" for r in result.rows)
    rows = list(csv.DictReader(io.StringIO(sheet_text(result, None))))
    assert sorted(r["id"] for r in rows if r["suspect"] == "fn") == suspects


def test_blind_sheet_hides_the_decision(default_snapshot: Snapshot) -> None:
    result = sample(records(traces(100)), options(n=10), None)
    blind = list(csv.DictReader(io.StringIO(sheet_text(result, "source", blind=True))))
    assert not {"decided_tier", "stratum", "rule", "keywords"} & set(blind[0])
    assert {"id", "text", "label", "weight", "source"} <= set(blind[0])


def test_gate_escalations_flag_their_request_as_a_false_negative(
    default_snapshot: Snapshot,
) -> None:
    """The confidence gate's decision-log line (`kind: gate`) is an annotation, never a row."""
    log = traces(100)
    for item in log:
        item["fn_suspect"] = False
    gates = [
        {
            "kind": "gate",
            "id": "req-3",
            "tier": "weak",
            "escalated_to": "strong",
            "fn_suspect": True,
        },
        {"kind": "gate", "id": "req-4", "tier": "weak", "escalated_to": None, "fn_suspect": False},
    ]
    items = [*log, *gates]
    flagged = feedback_suspects(records(items))
    assert flagged == {"req-3": "fn"}
    result = sample(records(items), options(n=30), None, flagged)
    assert [r.item.record.id for r in result.rows if r.stratum == "suspect"] == ["req-3"]
    assert all(r.item.record.get("kind") != "gate" for r in result.rows)
