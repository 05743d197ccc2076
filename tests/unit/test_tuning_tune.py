"""The tuner: a planted keyword and a planted length threshold are found, SLO modes, held-out
and cross-validated figures, and writing the new version into a config file."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from extproc.config.editing import insert_version, render_config
from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, compile_config
from extproc.core.classify import classify
from extproc.tuning.features import TuneError
from extproc.tuning.metrics import CostModel
from extproc.tuning.review import review
from extproc.tuning.review_report import review_blocks
from extproc.tuning.search import Objective
from extproc.tuning.tune import TuneOptions, next_version, tune
from tests.unit.tuning_data import FILLER, PRICED_CONFIG, chat, planted, records


def test_tune_finds_the_planted_keyword(default_snapshot: Snapshot) -> None:
    data = records(planted(600))
    result = tune(default_snapshot, "v7", data, TuneOptions(objective=Objective(max_misroute=0.1)))
    assert result.version == "v8"
    assert "kubernetes" in result.params.keywords
    assert "kubernetes" in result.spec["rules"][0]["keywords"]
    assert result.fit.feasible
    assert result.mode == "holdout"
    assert len(result.test) == pytest.approx(180, abs=40)
    assert not set(result.train) & set(result.test)
    # the written version really routes the keyword up, through classify()
    (probe,) = records([chat("how do I scale kubernetes pods")])
    assert probe.chat is not None
    assert classify(probe.chat, result.new_classifier).tier == "strong"
    assert classify(probe.chat, result.base_classifier).tier == "weak"
    # figures on held-out data improve on v7 (which sends all of these short requests weak)
    rev = review(result, CostModel({}))
    before, after = rev.held_out.overall["v7"], rev.held_out.overall["v8"]
    assert after.misroute is not None and before.misroute is not None
    assert after.misroute < before.misroute - 0.1
    assert rev.feasible_held_out
    assert any(c.effect == "fixed" and "kubernetes" in c.after_reason for c in rev.changes)


def test_tune_finds_a_length_threshold(default_snapshot: Snapshot) -> None:
    rng = random.Random(5)
    items = []
    for i in range(400):
        strong = i % 3 == 0
        size = rng.randint(260, 480) if strong else rng.randint(20, 180)
        text = " ".join(rng.choice(FILLER) for _ in range(200))[:size]
        items.append({"id": f"l{i}", **chat(text, "strong" if strong else "weak")})
    result = tune(default_snapshot, "v7", records(items), TuneOptions())
    chars = result.params.gt("chars")
    assert chars is not None and 180 <= chars < 260
    assert result.fit.state.misroutes == 0


def test_tune_weak_share_band_is_respected(default_snapshot: Snapshot) -> None:
    data = records(planted(600))
    band = Objective(weak_share=(0.85, 0.95))
    result = tune(default_snapshot, "v7", data, TuneOptions(objective=band))
    state = result.fit.state
    share = state.weak / result.fit.n
    assert 0.85 <= share <= 0.95
    assert result.fit.feasible


def test_tune_reports_an_unreachable_slo(default_snapshot: Snapshot) -> None:
    data = records(planted(300))
    impossible = Objective(max_misroute=0.0, weak_share=(0.99, 1.0))
    result = tune(default_snapshot, "v7", data, TuneOptions(objective=impossible))
    assert not result.fit.feasible
    assert result.fit.state.score[0] > 0


def test_tune_cross_validation(default_snapshot: Snapshot) -> None:
    data = records(planted(400))
    result = tune(default_snapshot, "v7", data, TuneOptions(folds=4, holdout=0))
    assert result.mode == "cv"
    assert len(result.folds) == 4
    assert sum(f.records for f in result.folds) == 400
    assert all(f.after_misroute < f.before_misroute for f in result.folds)
    assert len(result.train) == 400  # the version written is fitted on everything


def test_tune_is_reproducible_by_seed(default_snapshot: Snapshot) -> None:
    data = records(planted(300))
    one = tune(default_snapshot, "v7", data, TuneOptions(seed=3))
    two = tune(default_snapshot, "v7", list(reversed(data)), TuneOptions(seed=3))
    assert one.params == two.params
    assert {data[i].id for i in one.test} == {list(reversed(data))[i].id for i in two.test}


def test_tune_keeps_keywords_the_data_never_shows(default_snapshot: Snapshot) -> None:
    result = tune(default_snapshot, "v7", records(planted(300)), TuneOptions())
    for keyword in ("리팩터", "重构", "refactor"):
        assert keyword in result.params.keywords
    # the disabled bytes rule stays in the file, disabled
    rules = {r["name"]: r for r in result.spec["rules"]}
    assert rules["long_bytes"].get("enabled") is False


def test_tune_refuses_versions_of_another_shape(make_snapshot: Any) -> None:
    snapshot = make_snapshot(
        "tiers: [{name: a}, {name: b}, {name: c}]\nclassifier: v1\nclassifiers:\n"
        "  v1:\n    default: a\n    rules:\n      - {kind: chars, gt: 10, tier: b}\n"
        "      - {name: m, kind: messages, gt: 3, tier: c}\n"
    )
    with pytest.raises(TuneError, match="several tiers"):
        tune(snapshot, "v1", records([chat("x", "a")]), TuneOptions())


def test_next_version_names(make_snapshot: Any) -> None:
    base = "tiers: [{name: w}, {name: s}]\nclassifier: v7\nclassifiers:\n"
    snapshot = make_snapshot(
        base + "  v7: {default: w}\n  v12: {default: w}\n  prod: {default: w}\n"
    )
    assert next_version(snapshot, "v7") == "v13"
    assert next_version(snapshot, "prod") == "prod-tuned"


def test_new_version_written_into_the_config_keeps_comments() -> None:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    snapshot = compile_config(text, "cascade.yaml")
    result = tune(snapshot, "v7", records(planted(300)), TuneOptions(source="planted.jsonl"))
    new_text, kept = render_config(text, "cascade.yaml", result.version, result.spec)
    assert kept
    assert new_text.startswith(text.split("classifiers:")[0])  # everything before untouched
    assert "# Suggested for mixed Korean/English traffic" in new_text
    assert "# larger bodies go to default_tier" in new_text
    compiled = compile_config(new_text, "cascade.yaml")
    assert compiled.stable == "v7"  # not promoted: a new version waits for review and canary
    assert compiled.raw["classifiers"]["v8"] == result.spec
    assert "planted.jsonl" in result.spec["description"]


def test_config_written_in_flow_style_is_reserialised() -> None:
    text = "tiers: [{name: weak}, {name: strong}]\nclassifier: v1\nclassifiers: {v1: {default: weak}}\n"
    spec = {"default": "weak", "rules": [{"kind": "chars", "gt": 9, "tier": "strong"}]}
    assert insert_version(text, "v2", spec) is None
    new_text, kept = render_config(text, "c.yaml", "v2", spec)
    assert not kept
    assert yaml.safe_load(new_text)["classifiers"]["v2"] == spec


def test_review_report_renders(make_snapshot: Any) -> None:
    snapshot = make_snapshot(PRICED_CONFIG)
    result = tune(snapshot, "v1", records(planted(300)), TuneOptions())
    rev = review(result, CostModel({t.name: t.price for t in snapshot.tiers}), by=["source"])
    blocks = review_blocks(rev)
    titles = [getattr(b, "text", "") for b in blocks]
    assert "Rule changes" in titles
    assert any(t.startswith("Before / after on the held-out split") for t in titles)
    assert any(t.startswith("Requests that change tier") for t in titles)
    diff = next(b for b in blocks if getattr(b, "lang", "") == "diff")
    assert "kubernetes" in diff.text and diff.text.startswith("--- v1")
