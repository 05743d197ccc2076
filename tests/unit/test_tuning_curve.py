"""Cost-quality curves (PGR, CPT, APGR, the oracle), graded quality, the always-weak mark, SLOs
out of reach and N-tier labels, against figures computed by hand."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest

from extproc.config.snapshot import Snapshot, compile_config
from extproc.tuning.curve import CurvePoint as P
from extproc.tuning.curve import (
    cost_quality,
    decision_point,
    joined_curve,
    oracle_curve,
    score_curve,
)
from extproc.tuning.dataset import ReadStats
from extproc.tuning.document import render_html, render_markdown, render_text
from extproc.tuning.evaluate import EvalResult, Evaluator, evaluate
from extproc.tuning.metrics import CostModel, misroute_floor
from extproc.tuning.quality import QualityReader, parse_quality_spec
from extproc.tuning.report import eval_blocks, eval_json
from tests.unit.tuning_data import PRICED_CONFIG, chat, records

# ---------------------------------------------------------------------------------------------
# the curve on its own


def test_score_curve_cpt_apgr_by_hand() -> None:
    # gains (strong - weak): +1, +1, -1, +1; total 2
    curve = score_curve([0.9, 0.7, 0.4, 0.1], [0, 0, 1, 0], [1, 1, 0, 1])
    assert curve is not None
    assert curve.points == (P(0, 0), P(0.25, 0.5), P(0.5, 1), P(0.75, 0.5), P(1, 1))
    assert curve.cpt(0.5) == pytest.approx(0.25)
    assert curve.cpt(0.8) == pytest.approx(0.25 + 0.3 / 0.5 * 0.25)  # 0.40, interpolated
    # trapezoids of width 1/4: (0+.5)/2 + (.5+1)/2 + (1+.5)/2 + (.5+1)/2 = 2.5, x 1/4
    assert curve.apgr == pytest.approx(0.625)
    assert curve.pgr_at(0.6) == pytest.approx(1 + 0.4 * (0.5 - 1))  # 0.8
    assert curve.cpt(1.01) is None


def test_ties_move_together_and_weights_count() -> None:
    curve = score_curve([1, 1, 0], [0, 0, 0], [1, 1, 1], weights=[1, 1, 2])
    assert curve is not None
    # the two tied records (weight 2 of 4) go strong together: one step to (0.5, 0.5)
    assert curve.points == (P(0, 0), P(0.5, 0.5), P(1, 1))
    assert curve.apgr == pytest.approx(0.5)


def test_no_gap_means_no_pgr() -> None:
    assert score_curve([1, 0], [1, 1], [1, 1]) is None
    assert cost_quality([(True, 1.0, 0.0)]) is None


def test_a_point_has_a_cpt_only_where_it_reaches() -> None:
    point = decision_point([True, False, True, False], [0, 0, 1, 0], [1, 1, 0, 1])
    assert point is not None and point.points == (P(0.5, 0.0),)  # gains +1 and -1 cancel
    assert point.cpt(0.5) is None and point.apgr is None
    good = decision_point([True, True, False, False], [0, 0, 1, 0], [1, 1, 0, 1])
    assert good is not None and good.cpt(0.5) == pytest.approx(0.5)  # PGR (1+1)/2 = 1 at 50 %


def test_oracle_curve_is_the_best_with_at_most_each_share() -> None:
    # gains 6, 0, -3, 4 (total 7): best first 6 then 4, then nothing more to gain
    oracle = oracle_curve([3, 8, 7, 2], [9, 8, 4, 6])
    assert oracle is not None
    assert [p.share for p in oracle.points] == [0, 0.25, 0.5, 0.75, 1]
    assert [p.pgr for p in oracle.points] == pytest.approx([0, 6 / 7, 10 / 7, 10 / 7, 10 / 7])
    assert oracle.pgr_at(0.125) == pytest.approx(3 / 7)


def test_family_ends_are_joined() -> None:
    family = joined_curve("f", [P(0.2, 0.3), P(0.6, 0.7)], P(0.2, 0.3))
    assert family.joined and family.points[0] == P(0, 0) and family.points[-1] == P(1, 1)
    # 0.2 x 0.15 + 0.4 x 0.5 + 0.4 x 0.85
    assert family.apgr == pytest.approx(0.03 + 0.2 + 0.34)


def test_cost_quality_entry_point() -> None:
    rows = [(0.9, 0.0, 1.0), (0.7, 0.0, 1.0), (0.4, 1.0, 0.0), (0.1, 0.0, 1.0)]
    found = cost_quality(rows, threshold=0.5)
    assert found is not None and found.kind == "curve"
    assert (found.share, found.pgr) == pytest.approx((0.5, 1.0))  # two records >= 0.5
    assert found.random_pgr == pytest.approx(0.5)
    assert (found.cpt50, found.apgr) == pytest.approx((0.25, 0.625))
    assert found.oracle_pgr == pytest.approx(1.0)  # at 50 %: two gains of +1, of a total 2
    point = cost_quality([(True, 0.0, 1.0), (False, 0.0, 1.0)])
    assert point is not None and point.kind == "point" and point.pgr == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# graded quality through the evaluator

#: (text, label, weak score, strong score); v1 sends "refactor" and > 100 characters up.
GRADED = [
    ("please refactor", "strong", 3, 9),  # v1 strong
    ("hi", "weak", 8, 8),  # v1 weak
    ("x" * 150, "weak", 7, 4),  # v1 strong (length)
    ("what time is it", "strong", 2, 6),  # v1 weak
]


def graded_items() -> list[dict[str, Any]]:
    return [
        chat(text, label, evidence={"mixtral_score": w, "gpt4_score": s})
        for text, label, w, s in GRADED
    ]


@pytest.fixture
def priced() -> Snapshot:
    return compile_config(PRICED_CONFIG, "priced.yaml")


def run(snapshot: Snapshot, items: list[dict[str, Any]], **kwargs: Any) -> EvalResult:
    versions = kwargs.pop("versions", ["v1"])
    evaluator = Evaluator(snapshot, versions, CostModel({}), **kwargs)
    return evaluate(records(items), evaluator, "test", ReadStats())


def test_graded_quality_pgr_by_hand(priced: Snapshot) -> None:
    spec = parse_quality_spec("weak=mixtral_score,strong=gpt4_score")
    result = run(priced, graded_items(), quality=spec)
    v1 = result.overall["v1"]
    # all-weak (3+8+7+2)/4 = 5, all-strong (9+8+4+6)/4 = 6.75, v1 routed 9+8+4+2 = 5.75
    assert v1.quality == pytest.approx(5.75)
    assert v1.pgr == pytest.approx(0.75 / 1.75)
    assert v1.quality_retained == pytest.approx(5.75 / 6.75)
    # random at v1's 50 % strong share: expected quality 0.5 x 5 + 0.5 x 6.75, PGR = the share
    rand = result.baselines["random@v1"]
    assert rand.quality == pytest.approx(5.875) and rand.pgr == pytest.approx(0.5)
    # the oracle routes by label: 9, 8, 7, 6 -> 7.5
    oracle = result.baselines["oracle"]
    assert oracle.misroute == 0 and oracle.quality == pytest.approx(7.5)
    assert oracle.pgr == pytest.approx(2.5 / 1.75)
    assert result.graded
    point = next(c for c in result.curves if c.name == "v1")
    assert (point.share, point.pgr) == pytest.approx((0.5, 0.75 / 1.75))
    assert point.random_pgr == pytest.approx(0.5)
    assert point.oracle_pgr == pytest.approx(10 / 7)  # gains 6 and 4 of 7 at half the records
    # without --quality-field the booleans are missing: no quality, no curve
    plain = run(priced, graded_items())
    assert plain.overall["v1"].pgr is None and plain.curves == []


def test_quality_fields_and_patterns() -> None:
    items = records(
        [
            chat("a", evidence={"weak_score": "7.5", "strong_score": 9}),
            chat("b", weak_q=1, evidence={"strong_q": True}),
            chat("c", evidence={"weak_score": 3}),
        ]
    )
    pattern = QualityReader(("weak", "strong"), parse_quality_spec("evidence.{tier}_score"))
    assert pattern(items[0]) == {"weak": 7.5, "strong": 9.0}
    assert pattern(items[2]) is None  # every tier needs a value
    named = QualityReader(("weak", "strong"), parse_quality_spec("weak=weak_q,strong=strong_q"))
    assert named(items[1]) == {"weak": 1.0, "strong": 1.0}  # top level, then under evidence
    with pytest.raises(ValueError, match="TIER=FIELD"):
        parse_quality_spec("nonsense")


def test_family_curve_passes_through_the_version(priced: Snapshot) -> None:
    items = [
        chat("y" * n, "strong" if n > 60 else "weak", evidence=ev)
        for n, ev in [
            (20, {"weak_correct": True, "strong_correct": True}),
            (50, {"weak_correct": False, "strong_correct": False}),
            (80, {"weak_correct": False, "strong_correct": True}),
            (120, {"weak_correct": False, "strong_correct": True}),
        ]
    ]
    result = run(priced, items)
    family = next(c for c in result.curve_lines if c.kind == "family")
    v1 = next(c for c in result.curves if c.name == "v1")
    assert family.operating == P(0.25, 0.5)  # only 120 characters is over 100: 1 of 2 gains
    assert (v1.share, v1.pgr) == (0.25, 0.5)
    # the sweep: > 79 takes both gains at 50 %
    assert family.pgr_at(0.5) == pytest.approx(1.0)
    assert not family.joined  # no other rule matches: the family starts at (0, 0)


# ---------------------------------------------------------------------------------------------
# the always-weak mark, the SLO check, N tiers


def test_a_version_worse_than_always_weak_is_marked_everywhere(priced: Snapshot) -> None:
    text = PRICED_CONFIG.replace(
        "server:",
        "  v2:\n    default: weak\n    rules: [{kind: chars, gt: 1, tier: strong}]\nserver:",
    )
    snapshot = compile_config(text, "two.yaml")
    items = [chat(f"hello {i}", "weak") for i in range(8)] + [chat("hello", "strong")] * 2
    result = run(snapshot, items, versions=["v1", "v2"])
    # v1 sends nothing up (misroute 2/10 = always-weak's); v2 sends everything (8/10)
    blocks = eval_blocks(result)
    text_out = render_text(blocks)
    assert "v2 !" in text_out and "v1 !" not in text_out
    assert "v2 80.0 % against 20.0 %" in text_out
    markdown, _files = render_markdown(blocks, "r")
    assert "| v2 ! |" in markdown
    assert "v2 !</th>" in render_html(blocks, "t")
    data = orjson.loads(orjson.dumps(eval_json(result)))
    assert data["predictors"]["v2"]["loses_to_always_weak"] is True
    assert data["predictors"]["v1"]["loses_to_always_weak"] is False


def test_misroute_floor_by_hand() -> None:
    tiers = ("weak", "strong")
    labels = {"weak": 90.0, "strong": 10.0}
    assert misroute_floor(labels, tiers, (0.6, 0.7)) == pytest.approx(0.2)  # 90 % -> 70 %
    assert misroute_floor(labels, tiers, (0.85, 0.95)) == 0
    assert misroute_floor({"weak": 50.0, "strong": 50.0}, tiers, (0.6, 0.7)) == pytest.approx(0.1)


def test_slo_out_of_reach_even_for_the_oracle(priced: Snapshot) -> None:
    items = [chat(f"hi {i}", "weak") for i in range(9)] + [chat("please refactor", "strong")]
    result = run(priced, items, max_misroute=0.05, weak_share=(0.6, 0.7))
    assert result.slo is not None
    assert result.slo.floor == pytest.approx(0.2) and not result.slo.reachable
    assert result.slo.met == {"v1": False}  # v1 is right on all 10, but at 90 % weak
    assert "OUT OF REACH" in render_text(eval_blocks(result))
    assert eval_json(result)["slo"]["reachable"] is False
    easy = run(priced, items, max_misroute=0.05, weak_share=(0.85, 0.95))
    assert easy.slo is not None and easy.slo.reachable and easy.slo.met == {"v1": True}


THREE_TIERS = """
tiers: [{name: small}, {name: medium}, {name: large}]
classifier: v1
classifiers:
  v1:
    default: small
    rules:
      - {kind: keyword, keywords: [proof], tier: large}
      - {kind: chars, gt: 20, tier: medium}
"""


def test_n_tier_labels_per_tier_misroutes() -> None:
    snapshot = compile_config(THREE_TIERS, "three.yaml")
    q = {"small_correct": False, "medium_correct": True, "large_correct": True}
    items = [
        chat("short", "small", evidence=q),  # small: right
        chat("a question of some length", "small", evidence=q),  # medium: over
        chat("a proof please", "medium", evidence=q),  # large: over
        chat("tiny", "medium", evidence=q),  # small: under
        chat("a proof of the theorem", "large", evidence=q),  # large: right
        chat("long question without it", "large", evidence=q),  # medium: under
    ]
    result = run(snapshot, items)
    tiers = result.overall["v1"].per_tier()
    assert (tiers["small"].misroute, tiers["small"].under, tiers["small"].over) == (0.5, 0, 0.5)
    assert (tiers["medium"].under, tiers["medium"].over) == (0.5, 0.5)
    assert (tiers["large"].misroute, tiers["large"].under) == (0.5, 0.5)
    assert result.baselines["oracle"].shares == pytest.approx(
        {"small": 1 / 3, "medium": 1 / 3, "large": 1 / 3}
    )
    text = render_text(eval_blocks(result))
    assert "Misroutes per label tier" in text and "medium" in text
    # PGR is measured between the cheapest and the top tier
    point = next(c for c in result.curves if c.name == "v1")
    assert point.share == pytest.approx(2 / 6)
    html = render_html(eval_blocks(result), "t")
    figures = [f.split("</figure>")[0] for f in html.split("<figure>")[1:]]
    figure = next(f for f in figures if "PGR against" in f)
    ET.fromstring(figure)
    assert "oracle bound" in figure and "always-small" in figure
