"""`cascade train` on the shared labelled data, out of fold, against the v7 family in the same run.

Skipped when `../shared/data` is absent. The figures are those `docs/tuning.md` reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config.snapshot import DEFAULT_CONFIG, load_snapshot
from extproc.tuning.dataset import read_records
from extproc.tuning.metrics import CostModel
from extproc.tuning.train import TrainOptions, train
from extproc.tuning.train_report import SCORER, figures

pytest.importorskip("sklearn")

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MMLU = DATA / "mmlu_dev_gpt4_vs_mixtral.jsonl"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MMLU.exists(), reason="../shared/data is not there"),
]


def test_the_scorer_beats_the_v7_family_out_of_fold_on_the_multiple_choice_file() -> None:
    snapshot = load_snapshot(DEFAULT_CONFIG)
    records = [r for r in read_records(MMLU) if r.chat is not None and r.label]
    trained = train(records, snapshot.tier_names, TrainOptions(seed=0, target_share=0.3))
    found = figures(
        trained,
        records,
        snapshot,
        "v7",
        CostModel({t.name: t.price for t in snapshot.tiers}),
        with_learning_curve=False,
    )
    mine, family = found.curve(SCORER), found.curve("v7 family")
    assert mine is not None and family is not None
    assert mine.apgr is not None and family.apgr is not None
    assert mine.apgr > family.apgr + 0.02
    assert mine.cpt50 is not None and family.cpt50 is not None and mine.cpt50 < family.cpt50
    assert found.beats_rules and found.beats_length
    share = float((trained.decisions() == 1).mean())
    assert abs(share - 0.3) < 0.01  # the budget, on the held-out scores it was set from
