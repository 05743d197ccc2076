"""`cascade eval|sample|candidates|tune` through the console script, as a user runs them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.tuning_data import PRICED_CONFIG, chat, planted, write_jsonl

CASCADE = Path(sys.executable).with_name("cascade")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CASCADE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "labelled.jsonl", planted(300))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cascade.yaml"
    path.write_text(PRICED_CONFIG, encoding="utf-8")
    return path


def test_eval_table_json_and_reports(data: Path, config: Path, tmp_path: Path) -> None:
    table = run("eval", data, "--config", config, "--report", tmp_path / "r.html")
    assert table.returncode == 0, table.stderr
    assert "misroute" in table.stdout and "always-weak" in table.stdout
    assert "cost / 1k requests" in table.stdout
    assert "<svg" in (tmp_path / "r.html").read_text(encoding="utf-8")
    out = run("eval", data, "--config", config, "--json", "--by", "source")
    report = json.loads(out.stdout)
    assert set(report["predictors"]) == {"v1"}
    assert report["predictors"]["v1"]["records"] == 300
    assert report["breakdowns"]["source"][0]["value"] == "synthetic"
    missing = run("eval", data, "--classifier", "v99")
    assert missing.returncode == 2 and "unknown classifier" in missing.stderr


def test_sample_then_read_the_labelled_sheet_back(data: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.csv"
    made = run("sample", data, "-n", "20", "--seed", "4", "-o", sheet)
    assert made.returncode == 0, made.stderr
    assert "sampled 20 of 300 records" in made.stderr
    with sheet.open(encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 20
    for row in rows:
        row["label"] = "weak"
    with sheet.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labelled = tmp_path / "labelled.jsonl"
    back = run("sample", "--read-sheet", sheet, "-o", labelled)
    assert back.returncode == 0, back.stderr
    assert "read 20 labelled rows (weak 20)" in back.stderr
    scored = run("eval", labelled, "--weight", "weight", "--json")
    assert json.loads(scored.stdout)["weighted"] is True


def test_candidates_lists_the_planted_word(data: Path) -> None:
    result = run("candidates", data, "--top", "5")
    assert result.returncode == 0, result.stderr
    assert "kubernetes" in result.stdout.split("Current keywords")[0]
    as_json = json.loads(run("candidates", data, "--json").stdout)
    assert as_json["candidates"][0]["term"] == "kubernetes"


def test_tune_writes_a_valid_version_and_a_review(data: Path, config: Path) -> None:
    result = run("tune", data, "--config", config, "--max-misroute", "10%")
    assert result.returncode == 0, result.stderr
    assert "kubernetes" in result.stdout
    check = run("check-config", config)
    assert check.returncode == 0, check.stderr
    assert "versions v1 (2 rules), v2 (" in check.stdout
    review = config.with_name("cascade-v2-review.md")
    text = review.read_text(encoding="utf-8")
    assert "## Rule changes" in text and "(cascade-v2-review-sweep.svg)" in text
    assert config.with_name("cascade-v2-review-sweep.svg").exists()
    again = run("tune", data, "--config", config, "--version", "v2")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_tune_unreachable_slo_writes_nothing_and_exits_3(data: Path, config: Path) -> None:
    before = config.read_text(encoding="utf-8")
    result = run("tune", data, "--config", config, "--max-misroute", "0", "--weak-share", "0.99:1")
    assert result.returncode == 3
    assert "NOT met" in result.stdout and "was NOT written" in result.stdout
    assert config.read_text(encoding="utf-8") == before


def test_tune_needs_somewhere_to_write(data: Path, tmp_path: Path) -> None:
    result = run("tune", data, cwd=tmp_path)
    assert result.returncode == 2 and "--out" in result.stderr
    dry = run("tune", data, "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    summary = json.loads(dry.stdout)
    assert summary["version"] == "v8" and summary["written"] == []
    out = run("tune", data, "--out", "mine.yaml", "--cv", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Cross-validation" in out.stdout
    assert (tmp_path / "mine.yaml").read_text(encoding="utf-8").startswith("# cascade router")


def test_bad_arguments(data: Path) -> None:
    assert run("tune", data, "--weak-share", "0.7").returncode == 2
    assert run("tune", data, "--max-misroute", "2").returncode == 2
    assert run("sample").returncode == 2
    assert run("eval", "no-such-file.jsonl").returncode == 2


def test_eval_reads_stdin_gzip_is_optional(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [chat("please refactor", "strong")])
    piped = subprocess.run(
        [str(CASCADE), "eval", "-", "--json"],
        input=path.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["predictors"]["v7"]["tp"] == 1
