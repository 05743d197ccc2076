"""The JSON-lines decision log: background writes, size rotation, a bounded queue."""

from __future__ import annotations

import json
from pathlib import Path

from extproc.config.snapshot import DecisionLogSettings
from extproc.telemetry.decision_log import DecisionLog


def test_writes_one_line_per_record_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "decisions.jsonl"
    log = DecisionLog(DecisionLogSettings(path=str(path), max_bytes=2048, backups=2))
    log.start()
    for i in range(100):
        log.write({"kind": "request", "id": f"r{i}", "tier": "weak", "pad": "x" * 40})
    log.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    lines = [json.loads(line) for p in path.parent.iterdir() for line in p.read_text().splitlines()]
    assert all(set(r) == {"kind", "id", "tier", "pad"} for r in lines)
    assert all(p.stat().st_size <= 2048 for p in path.parent.iterdir())
    assert json.loads(path.read_text().splitlines()[-1])["id"] == "r99"
    assert log.written == 100


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    drops: list[int] = []
    log = DecisionLog(
        DecisionLogSettings(path=str(tmp_path / "d.jsonl"), queue_size=2),
        on_drop=lambda: drops.append(1),
    )
    for i in range(5):  # writer not started: the queue fills up
        log.write({"id": i})
    assert log.dropped == 3 and len(drops) == 3
    log.start()
    log.flush()
    log.close()
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 2
