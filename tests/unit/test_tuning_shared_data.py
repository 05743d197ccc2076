"""The tuning tools over the public labelled data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from extproc.config.snapshot import Snapshot
from extproc.tuning.candidates import Example, find_candidates
from extproc.tuning.dataset import ReadStats, Record, read_records
from extproc.tuning.search import Objective
from extproc.tuning.tune import TuneOptions, tune
from tests.conftest import SHARED

DATA = SHARED / "data"
FILES = [DATA / "gsm8k_dev_gpt4_vs_mixtral.jsonl", DATA / "mmlu_dev_gpt4_vs_mixtral.jsonl"]
CASCADE = Path(sys.executable).with_name("cascade")

pytestmark = pytest.mark.skipif(
    not all(path.exists() for path in FILES), reason="../shared/data is not present"
)


@pytest.fixture(scope="module")
def labelled() -> list[Record]:
    stats = ReadStats()
    found = [r for path in FILES for r in read_records(path, stats)]
    assert stats.invalid == 0 and stats.bad_messages == 0
    return found


def test_eval_output_shape_over_shared_data() -> None:
    result = subprocess.run(
        [str(CASCADE), "eval", *map(str, FILES), "--json", "--by", "source"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    v7 = report["predictors"]["v7"]
    assert v7["records"] == v7["labelled"] == 3319
    assert sum(v7["confusion"]["strong"].values()) == 776  # 383 + 393 strong labels
    for key in ("misroute", "precision", "recall", "f1", "weak_share", "quality", "pgr"):
        assert 0 <= v7[key] <= 1, key
    weak = report["baselines"]["always-weak"]
    assert weak["misroute"] == pytest.approx(776 / 3319)
    assert report["baselines"]["random@v7"]["pgr"] == pytest.approx(v7["strong_share"])
    assert {g["value"] for g in report["breakdowns"]["source"]} == {
        "routellm-gsm8k",
        "routellm-mmlu",
    }
    sweep = report["sweeps"]["v7"]
    assert sweep["current"] == 500 and len(sweep["points"]) > 10
    assert report["seconds"] < 10


def test_candidates_and_tune_over_shared_data(
    default_snapshot: Snapshot, labelled: list[Record]
) -> None:
    examples = [Example(r.chat, r.label == "strong") for r in labelled if r.chat is not None]
    found = find_candidates(default_snapshot, "v7", examples)
    assert found.false_negatives == 654
    assert found.candidates and all(c.fixes >= 3 for c in found.candidates)
    assert {k.keyword for k in found.keywords} >= {"refactor", "security", "리팩터"}
    objective = Objective(max_misroute=0.30, weak_share=(0.80, 0.95))
    result = tune(default_snapshot, "v7", labelled, TuneOptions(objective=objective))
    assert result.version == "v8"
    assert len(result.train) + len(result.test) == 3319
    assert result.fit.moves
