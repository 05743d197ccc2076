"""Reading data sets, evaluating versions side by side, breakdowns, the sweep, reports."""

from __future__ import annotations

import gzip
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from extproc.config.snapshot import Snapshot, compile_config
from extproc.tuning.dataset import ReadStats, read_records
from extproc.tuning.document import render_html, render_markdown, render_text, write_report
from extproc.tuning.evaluate import LOGGED, EvalResult, Evaluator, evaluate
from extproc.tuning.lang import detect_lang
from extproc.tuning.metrics import CostModel
from extproc.tuning.report import eval_blocks, eval_json
from extproc.tuning.segments import dominant_script
from tests.unit.tuning_data import PRICED_CONFIG, chat, records, write_jsonl


@pytest.fixture
def priced() -> Snapshot:
    text = PRICED_CONFIG.replace("classifier: v1", "classifier: v1\ncanary: {version: v2}")
    text = text.replace(
        "server:",
        "  v2:\n    default: weak\n    rules: [{kind: chars, gt: 5, tier: strong}]\nserver:",
    )
    return compile_config(text, "priced.yaml")


ITEMS = [
    chat(
        "please refactor",
        "strong",
        source="ide",
        evidence={"weak_correct": False, "strong_correct": True},
    ),
    chat("hi", "weak", source="ide", evidence={"weak_correct": True, "strong_correct": True}),
    chat("x" * 150, "weak", source="ide", evidence={"weak_correct": True, "strong_correct": False}),
    chat(
        "이 모듈 설계",
        "strong",
        source="chat",
        evidence={"weak_correct": False, "strong_correct": True},
    ),
    chat(
        "what time is it",
        "strong",
        source="chat",
        evidence={"weak_correct": True, "strong_correct": True},
    ),
    chat("no label here", None, source="chat"),
]


def run(snapshot: Snapshot, items: list[dict[str, object]], **kwargs: object) -> EvalResult:
    versions = kwargs.pop("versions", ["v1", "v2"])
    evaluator = Evaluator(
        snapshot, versions, CostModel({t.name: t.price for t in snapshot.tiers}), **kwargs
    )  # type: ignore[arg-type]
    return evaluate(records(items), evaluator, "test", ReadStats())


def test_two_versions_side_by_side(priced: Snapshot) -> None:
    result = run(priced, ITEMS)
    assert result.predictors == ["v1", "v2"]
    v1 = result.overall["v1"]
    # v1: refactor->strong, hi->weak, 150 x->strong (chars>100), 설계->strong, time->weak, unlabelled->weak
    assert v1.confusion == {"weak": {"weak": 1, "strong": 1}, "strong": {"weak": 1, "strong": 2}}
    assert v1.records == 6 and v1.labelled == 5
    assert v1.weak_share == pytest.approx(3 / 6)  # shares count unlabelled records too
    assert v1.quality == pytest.approx(4 / 5)
    v2 = result.overall["v2"]  # chars > 5 only
    assert v2.confusion["strong"] == {"weak": 0, "strong": 3}
    assert set(result.baselines) == {
        "always-weak",
        "always-strong",
        "random@v1",
        "random@v2",
        "oracle",
    }
    assert result.baselines["always-weak"].misroute == pytest.approx(3 / 5)


def test_breakdown_by_field_and_derived_lang(priced: Snapshot) -> None:
    result = run(priced, ITEMS, by=["source", "lang", "evidence.weak_correct"])
    by_source = dict(result.breakdowns["source"])
    assert by_source["ide"]["v1"].records == 3 and by_source["chat"]["v1"].records == 3
    langs = dict(result.breakdowns["lang"])
    assert set(langs) == {"latin", "ko"}
    assert set(dict(result.breakdowns["evidence.weak_correct"])) == {"true", "false", "(none)"}


def test_breakdown_folds_rare_values(priced: Snapshot) -> None:
    items = [chat(f"hello {i}", "weak", user=f"u{i}") for i in range(30)]
    result = run(priced, items, by=["user"])
    groups = result.breakdowns["user"]
    assert len(groups) == 13
    assert groups[-1][0] == "(other) x18"
    assert groups[-1][1]["v1"].records == 18


def test_sweep_operating_point_matches_the_version(priced: Snapshot) -> None:
    result = run(priced, ITEMS * 3)
    sweep = result.sweeps["v1"]
    assert sweep.current == 100
    v1 = result.overall["v1"]
    assert sweep.operating.strong_share == pytest.approx(v1.strong_share)
    assert sweep.operating.misroute == pytest.approx(v1.misroute)
    assert sweep.operating.quality == pytest.approx(v1.quality)
    assert sweep.operating.cost_per_1k == pytest.approx(v1.cost_per_1k)
    shares = [p.strong_share for p in sweep.points]
    assert shares == sorted(shares)
    assert any(p.threshold is None for p in sweep.points)


def test_logged_decisions_are_scored_without_text(priced: Snapshot) -> None:
    logged = [
        {"id": "a", "tier": "strong", "label": "strong", "messages": 2, "chars": 900},
        {"id": "b", "tier": "weak", "label": "strong", "messages": 1, "chars": 20},
        {**chat("hi", "weak"), "tier": "weak"},
    ]
    result = run(priced, logged, versions=["v1"])
    assert result.predictors == [LOGGED, "v1"]
    assert result.overall[LOGGED].records == 3
    assert result.overall["v1"].records == 1
    assert result.no_text == 2


def test_labels_that_are_not_tiers_are_counted(priced: Snapshot) -> None:
    result = run(priced, [chat("hi", "huge"), chat("hi", "weak")])
    assert result.unknown_labels == {"huge": 1}
    assert result.overall["v1"].labelled == 1


def test_read_jsonl_gzip_csv_and_bad_lines(tmp_path: Path) -> None:
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(
        orjson.dumps(chat("hi", " Strong "))
        + b"\n\nnot json\n[1]\n"
        + orjson.dumps({"id": "log", "messages": 3, "messages_text": "hello", "tier": "weak"})
        + b"\n"
        + orjson.dumps({"id": "bad", "messages": [{"role": 1}]})
        + b"\n"
    )
    stats = ReadStats()
    items = list(read_records(plain, stats))
    assert [r.label for r in items] == ["strong", None, None]
    assert items[1].chat is not None and items[1].chat.messages == (("user", "hello"),)
    assert items[1].logged_tier == "weak"
    assert items[2].chat is None
    assert (stats.invalid, stats.bad_messages) == (2, 1)
    assert "line 3" in stats.summary()
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert len(list(read_records(packed))) == 3
    sheet = tmp_path / "c.csv"
    sheet.write_text(
        'id,label,text,messages_json\nx,weak,hello,\ny,,"[user] hi","[{""role"":""user"",""content"":""hi""}]"\n',
        encoding="utf-8",
    )
    rows = list(read_records(sheet))
    assert rows[0].label == "weak" and rows[0].chat is not None
    assert rows[1].label is None and rows[1].chat is not None
    assert rows[1].chat.messages == (("user", "hi"),)


def test_reports_render_in_every_format(priced: Snapshot, tmp_path: Path) -> None:
    result = run(priced, ITEMS * 2, by=["source"])
    blocks = eval_blocks(result)
    text = render_text(blocks)
    assert "misroute" in text and "random@v1" in text and "cost / 1k requests" in text
    markdown, figures = render_markdown(blocks, "report")
    assert "| misroute |" in markdown
    assert set(figures) == {
        "report-confusion-v1.svg",
        "report-confusion-v2.svg",
        "report-sweep.svg",
        "report-curve.svg",
    }
    for svg in figures.values():
        ET.fromstring(svg)  # well-formed XML
    html = render_html(blocks, "eval")
    assert html.count("<svg") == 4
    ET.fromstring(html.split("<figure>")[1].split("</figure>")[0])
    data = eval_json(result)
    assert orjson.loads(orjson.dumps(data))["predictors"]["v1"]["misroute"] == pytest.approx(
        result.overall["v1"].misroute
    )
    written = write_report(tmp_path / "r.md", blocks, "t")
    assert {p.name for p in written} == {"r.md", *(f.replace("report", "r") for f in figures)}
    assert write_report(tmp_path / "r.html", blocks, "t")[0].read_text().startswith("<!doctype")
    with pytest.raises(ValueError, match="unknown report format"):
        write_report(tmp_path / "r.pdf", blocks, "t")


def test_eval_file_of_10k_lines_streams(priced: Snapshot, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "big.jsonl", (chat(f"hello {i}", "weak") for i in range(2000)))
    evaluator = Evaluator(priced, ["v1"], CostModel({}))
    result = evaluate(read_records(path), evaluator, "big", ReadStats())
    assert result.overall["v1"].records == 2000


def test_dominant_script_agrees_with_detect_lang() -> None:
    rng = random.Random(11)
    alphabet = (
        "abcXYZ 12_é ß ñ ΩЖ한국어中文かなカナー・ㄱ،ع١²½’“”\u1100\u318f\uf900\u3400\u0250\u1e00"
    )
    texts = ["", "1234 !!", "x" * 1990 + "한국어" * 10, "Debug 이 코드 please now"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(3000)]
    for text in texts:
        assert dominant_script(text) == detect_lang(text), text


def test_sweep_reuses_the_versions_decisions_exactly(priced: Snapshot) -> None:
    items = ITEMS * 3 + [chat("y" * n, "strong" if n > 120 else "weak") for n in range(0, 300, 7)]
    fast = Evaluator(priced, ["v1"], CostModel({}))
    slow = Evaluator(priced, ["v1"], CostModel({}))
    assert fast.sweeps[0].length_rule == "long_text"
    slow.sweeps[0].length_rule = ""  # classify() the variant without the rule on every record
    one = evaluate(records(items), fast, "t", ReadStats())
    two = evaluate(records(items), slow, "t", ReadStats())
    assert one.sweeps == two.sweeps and one.curves == two.curves
