"""`cascade train`: grouped folds, calibration, budgets, N tiers, planted terms, the CLI."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extproc.cli.main import main
from extproc.config.artifacts import parse_artifact
from extproc.config.snapshot import compile_config
from extproc.core.chat import ChatRequest
from extproc.core.classify import classify
from extproc.core.features import extract
from extproc.tuning.dataset import ReadStats, Record, make_record
from extproc.tuning.learning_curve import roc_auc
from extproc.tuning.train import (
    TrainOptions,
    artifact_bytes,
    assign_folds,
    calibrated,
    platt,
    route,
    train,
)

pytest.importorskip("sklearn")

WORDS = {
    "latin": (
        "the a of to list sort file read write loop value name user page table query "
        "error test build print string number array object class method return"
    ).split(),
    "ko": "이 그 파일 목록 정렬 읽기 쓰기 값 이름 사용자 페이지 오류 테스트 빌드 출력 문자열".split(),
    "zh": "这个 文件 列表 排序 读取 写入 数值 名字 用户 页面 错误 测试 构建 输出 字符串".split(),
}
PLANTED = {"latin": "eigenvalue", "ko": "쿠버네티스", "zh": "微服务架构"}


def synthetic(
    n: int,
    seed: int,
    *,
    tiers: Sequence[str] = ("weak", "strong"),
    planted: dict[str, str] | None = None,
    users: int = 0,
) -> list[Record]:
    """Records whose label depends on a planted term (and a little on length), with noise.

    With more than two tiers, a planted term means the top tier, length alone the middle one.
    """
    rng = random.Random(seed)
    terms = PLANTED if planted is None else planted
    records = []
    for index in range(n):
        lang = rng.choice(list(WORDS))
        words = [rng.choice(WORDS[lang]) for _ in range(rng.randint(3, 40))]
        hard = rng.random() < 0.3
        if hard:
            words.insert(rng.randrange(len(words) + 1), terms[lang])
        sep = "" if lang == "zh" else " "
        text = sep.join(words)
        rank = (len(tiers) - 1) if hard else (1 if len(tiers) > 2 and len(words) > 30 else 0)
        if rng.random() < 0.08:
            rank = rng.randrange(len(tiers))
        data: dict[str, Any] = {
            "id": f"r{seed}-{index}",
            "messages": [{"role": "user", "content": text}],
            "label": tiers[rank],
            "evidence": {"strong_correct": True, "weak_correct": rank == 0},
        }
        if users:
            data["user_id"] = f"u{rng.randrange(users)}"
        records.append(make_record(index, data, ReadStats(), "test"))
    return records


def as_chat(record: Record) -> ChatRequest:
    assert record.chat is not None
    return record.chat


def test_grouped_folds_keep_groups_together_and_balance_sizes() -> None:
    rng = random.Random(1)
    groups = [f"g{rng.randrange(40)}" for _ in range(1000)]
    folds = assign_folds(groups, 5, seed=3)
    by_group: dict[str, set[int]] = {}
    for group, fold in zip(groups, folds.tolist(), strict=True):
        by_group.setdefault(group, set()).add(fold)
    assert all(len(f) == 1 for f in by_group.values())
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= max(groups.count(g) for g in set(groups))
    assert not np.array_equal(folds, assign_folds(groups, 5, seed=4))  # the seed matters
    assert np.array_equal(folds, assign_folds(groups, 5, seed=3))


def test_train_groups_by_user_when_records_have_one() -> None:
    records = synthetic(400, 5, users=30)
    trained = train(records, ("weak", "strong"), TrainOptions(folds=4, bits=14))
    assert trained.design.group_field == "user_id"
    for user in {str(r.get("user_id")) for r in records}:
        rows = [i for i, r in enumerate(records) if r.get("user_id") == user]
        assert len(set(trained.folds[rows].tolist())) == 1


def test_platt_calibration_is_monotone_and_fits_the_rate() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 2, 4000)
    positive = rng.random(4000) < 1 / (1 + np.exp(-(0.7 * raw - 1.0)))
    a, b = platt(raw, positive)
    assert a > 0
    grid = np.linspace(-6, 6, 101)
    assert np.all(np.diff(calibrated(grid, a, b)) > 0)
    assert abs(a - 0.7) < 0.15 and abs(b + 1.0) < 0.2
    assert calibrated(raw, a, b).mean() == pytest.approx(positive.mean(), abs=0.01)


def test_planted_korean_and_chinese_terms_are_found_by_the_ngrams() -> None:
    records = synthetic(1500, 7)
    trained = train(records, ("weak", "strong"), TrainOptions(seed=1))
    positive = trained.design.ranks > 0
    assert (roc_auc(trained.oof[:, 0], positive) or 0) > 0.85
    scorer = parse_artifact(artifact_bytes(trained))
    for lang, term in (("ko", "쿠버네티스"), ("zh", "微服务架构")):
        words = WORDS[lang][:8]
        sep = "" if lang == "zh" else " "
        plain = sep.join(words)
        marked = sep.join([*words[:4], term, *words[4:]])
        p_plain = scorer.probabilities(extract((("user", plain),), scorer.bits))[0]
        p_marked = scorer.probabilities(extract((("user", marked),), scorer.bits))[0]
        assert p_marked > p_plain + 0.3, (lang, p_plain, p_marked)
        # the difference comes from the hashed n-grams, not from the length features
        contributions = dict(scorer.contributions(extract((("user", marked),), scorer.bits), 0))
        ngram = sum(contributions[f] for f in ("char1", "char2", "char3", "char4", "word1"))
        assert ngram > 0


def _config(directory: Path, trained: Any, extra: str = "", tiers: Sequence[str] = ()) -> Any:
    data = artifact_bytes(trained)
    (directory / "model.json").write_bytes(data)
    tier_list = ", ".join(f"{{name: {t}, model: m{t}}}" for t in (tiers or trained.tiers))
    text = (
        f"tiers: [{tier_list}]\nclassifier: learned\nclassifiers:\n  learned:\n"
        f"    default: {trained.tiers[0]}\n    rules:\n"
        f"      - {{kind: scorer, model: model.json, "
        f"sha256: '{hashlib.sha256(data).hexdigest()}'{extra}}}\n"
    )
    (directory / "cascade.yaml").write_text(text)
    return compile_config(text, str(directory / "cascade.yaml")).classifiers["learned"]


def test_a_budget_hits_its_share_on_held_back_data(tmp_path: Path) -> None:
    records = synthetic(3000, 11)
    held_back = synthetic(2000, 12)
    trained = train(records, ("weak", "strong"), TrainOptions(seed=2, target_share=0.4))
    classifier = _config(tmp_path, trained)
    share = np.mean([classify(as_chat(r), classifier).tier == "strong" for r in held_back])
    assert abs(share - 0.4) <= 0.02, share
    # another budget from the same artifact, set in the config
    other = _config(tmp_path, trained, ", strong_share: 0.25")
    share = np.mean([classify(as_chat(r), other).tier == "strong" for r in held_back])
    assert abs(share - 0.25) <= 0.02, share


def test_training_is_reproducible_by_seed() -> None:
    records = synthetic(600, 13)
    one = artifact_bytes(train(records, ("weak", "strong"), TrainOptions(seed=4, bits=14)))
    two = artifact_bytes(train(records, ("weak", "strong"), TrainOptions(seed=4, bits=14)))
    other = artifact_bytes(train(records, ("weak", "strong"), TrainOptions(seed=5, bits=14)))
    assert one == two
    assert json.loads(one)["boundaries"] != json.loads(other)["boundaries"]


def test_three_tiers_learn_the_cheapest_sufficient_tier(tmp_path: Path) -> None:
    tiers = ("small", "medium", "large")
    records = synthetic(2500, 17, tiers=tiers)
    trained = train(records, tiers, TrainOptions(seed=0))
    assert len(trained.document["boundaries"]) == 2
    assert np.all(trained.oof[:, 1] <= trained.oof[:, 0])  # P(>medium) <= P(>small)
    decided = trained.decisions()
    ranks = trained.design.ranks
    assert set(decided.tolist()) == {0, 1, 2}
    assert (decided == ranks).mean() > 0.75
    classifier = _config(tmp_path, trained)
    held_back = synthetic(500, 18, tiers=tiers)
    served = [classify(as_chat(r), classifier).tier for r in held_back]
    accuracy = np.mean([s == r.label for s, r in zip(served, held_back, strict=True)])
    assert accuracy > 0.75 and set(served) == set(tiers)


def test_route_picks_the_first_boundary_under_its_threshold() -> None:
    probabilities = np.array([[0.9, 0.8], [0.9, 0.1], [0.2, 0.1], [0.6, 0.55]])
    assert route(probabilities, (0.5, 0.5)).tolist() == [2, 1, 0, 2]
    assert route(probabilities, (0.5, 0.6)).tolist() == [2, 1, 0, 1]


def write_jsonl(path: Path, records: Sequence[Record]) -> None:
    path.write_text("".join(json.dumps(dict(r.data)) + "\n" for r in records))


def test_cascade_train_writes_an_artifact_the_config_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "labelled.jsonl"
    write_jsonl(data, synthetic(800, 19))
    model = tmp_path / "model.json"
    code = main(["train", str(data), "-o", str(model), "--target-share", "0.3", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert out["beats_length"] is True and out["beats_rules"] is True
    assert [row["labels"] for row in out["learning_curve"]] == [100, 300]
    assert model.stat().st_size < 5 * 1024 * 1024
    artifact = model.read_text()
    for word in ("eigenvalue", "쿠버네티스", "微服务架构", "array", "사용자", "字符串"):
        assert word not in artifact  # no text of any record in the artifact
