"""Routing metrics against tables computed by hand; the baselines; costs; token estimates."""

from __future__ import annotations

import pytest

from extproc.config.snapshot import Price
from extproc.tuning.metrics import (
    CostModel,
    Tally,
    baselines,
    correctness,
    estimate_tokens,
    expected_metrics,
    metrics_from_tally,
)
from tests.unit.tuning_data import chat, records

TIERS = ("weak", "strong")
PRICES = {"weak": Price(1, 2), "strong": Price(10, 20)}
# 1,000 tokens in and 500 out: weak $0.002, strong $0.02 per request
COSTS = {"weak": 0.002, "strong": 0.02}

# (label, decision, weak model correct, strong model correct) for 10 requests:
# TP 3, FN 1, FP 2, TN 4
TABLE = [
    ("strong", "strong", False, True),
    ("strong", "strong", False, True),
    ("strong", "strong", True, True),
    ("strong", "weak", False, True),
    ("weak", "strong", True, True),
    ("weak", "strong", True, False),
    ("weak", "weak", True, True),
    ("weak", "weak", True, True),
    ("weak", "weak", True, False),
    ("weak", "weak", False, False),
]


def tally(weight: float = 1.0) -> Tally:
    result = Tally(TIERS)
    for label, decided, weak_ok, strong_ok in TABLE:
        result.add(decided, label, weight, COSTS, {"weak": weak_ok, "strong": strong_ok})
    return result


def test_confusion_precision_recall_f1_misroute_by_hand() -> None:
    m = metrics_from_tally("v", tally(), priced=True)
    assert m.confusion == {"weak": {"weak": 4, "strong": 2}, "strong": {"weak": 1, "strong": 3}}
    assert (m.tp, m.fn, m.fp, m.tn) == (3, 1, 2, 4)
    assert m.precision == pytest.approx(3 / 5)
    assert m.recall == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m.misroute == pytest.approx(3 / 10)
    assert (m.under, m.over) == (1, 2)
    assert m.weak_share == pytest.approx(0.5)
    assert m.strong_share == pytest.approx(0.5)


def test_cost_per_1k_requests_by_hand() -> None:
    m = metrics_from_tally("v", tally(), priced=True)
    # 5 on strong ($0.02) + 5 on weak ($0.002) = $0.11 per 10 requests
    assert m.cost_per_1k == pytest.approx(11.0)
    assert metrics_from_tally("v", tally(), priced=False).cost_per_1k is None


def test_quality_retained_and_pgr_by_hand() -> None:
    m = metrics_from_tally("v", tally(), priced=True)
    # routed correct: 1,1,1,0 (strong rows) + 1,0 (FP on strong) + 1,1,1,0 (TN on weak) = 7
    assert m.quality == pytest.approx(0.7)
    all_weak, all_strong = 6 / 10, 7 / 10
    assert m.quality_retained == pytest.approx(0.7 / all_strong)
    assert m.pgr == pytest.approx((0.7 - all_weak) / (all_strong - all_weak))


def test_weights_scale_counts_not_rates() -> None:
    one, two = metrics_from_tally("v", tally(), True), metrics_from_tally("v", tally(2.0), True)
    assert two.tp == 2 * one.tp
    assert two.records == 20
    assert (two.misroute, two.precision, two.pgr) == (one.misroute, one.precision, one.pgr)


def test_baselines_always_weak_always_strong_random() -> None:
    t = tally()
    version = metrics_from_tally("v", t, True)
    found = baselines(t, True, {"v": version})
    weak, strong, rand = found["always-weak"], found["always-strong"], found["random@v"]
    assert weak.misroute == pytest.approx(0.4)  # the strong base rate
    assert weak.recall == 0 and weak.precision is None and weak.pgr == 0
    assert weak.cost_per_1k == pytest.approx(2.0)
    assert strong.misroute == pytest.approx(0.6)
    assert strong.precision == pytest.approx(0.4) and strong.pgr == pytest.approx(1.0)
    assert strong.cost_per_1k == pytest.approx(20.0)
    # random at the version's 50 % strong share: expected misroute .5*.6 + .5*.4, PGR = share
    assert rand.misroute == pytest.approx(0.5)
    assert rand.pgr == pytest.approx(0.5)
    assert rand.precision == pytest.approx(0.4)  # a random router's precision is the base rate
    assert rand.cost_per_1k == pytest.approx(11.0)


def test_expected_metrics_pgr_equals_strong_share() -> None:
    for share in (0.1, 0.35, 0.9):
        m = expected_metrics("r", tally(), {"weak": 1 - share, "strong": share}, True)
        assert m.pgr == pytest.approx(share)


def test_three_tiers_under_and_over_routing() -> None:
    t = Tally(("small", "medium", "large"))
    for label, decided in [
        ("large", "small"),
        ("medium", "small"),
        ("small", "large"),
        ("medium", "medium"),
    ]:
        t.add(decided, label, 1.0, {}, None)
    m = metrics_from_tally("v", t, False)
    assert (m.under, m.over) == (2, 1)
    assert m.misroute == pytest.approx(3 / 4)
    assert m.weak_share == pytest.approx(0.5)  # the cheapest tier
    assert m.shares["medium"] == pytest.approx(0.25)
    assert m.quality is None and m.pgr is None


@pytest.mark.parametrize(
    ("texts", "tokens"),
    [
        (["abcd" * 10], 10),
        (["한국어"], 3),
        (["设计 abcd"], 2 + 2),  # 2 Han characters + 5 ASCII (" abcd") -> ceil(5/4) = 2
        ([""], 1),
        (["ab", "cd"], 1),
    ],
    ids=["ascii", "hangul", "mixed", "empty", "several"],
)
def test_estimate_tokens(texts: list[str], tokens: int) -> None:
    assert estimate_tokens(texts) == tokens


def test_cost_model_uses_record_tokens_else_estimates() -> None:
    model = CostModel(PRICES, output_tokens=100)
    logged, estimated = records(
        [chat("x" * 4000, tokens_in=1000, tokens_out=500), chat("x" * 4000)]
    )
    assert model.costs(logged) == pytest.approx({"weak": 0.002, "strong": 0.02})
    # 1,000 estimated input tokens, 100 assumed output tokens
    assert model.costs(estimated) == pytest.approx({"weak": 0.0012, "strong": 0.012})
    assert any("assumed 100" in note for note in model.notes(True, True))


def test_cost_model_per_hour_needs_a_throughput() -> None:
    model = CostModel({"gpu": Price(per_hour=3.6)}, tokens_per_second=100)
    (record,) = records([chat("hi", tokens_out=1000)])
    # $3.6/h = $0.001/s; 1,000 tokens at 100 tokens/s = 10 s
    assert model.costs(record)["gpu"] == pytest.approx(0.01)
    assert any("100 output tokens/s" in note for note in model.notes(False, False))


def test_correctness_reads_evidence() -> None:
    items = records(
        [
            chat("a", evidence={"strong_correct": True, "weak_correct": False}),
            chat("b", evidence={"weak_correct": True}),
            chat("c", evidence={"small_correct": True, "large_correct": False}),
        ]
    )
    assert correctness(items[0], TIERS) == {"weak": False, "strong": True}
    assert correctness(items[1], TIERS) is None
    assert correctness(items[2], ("small", "large")) == {"small": True, "large": False}
