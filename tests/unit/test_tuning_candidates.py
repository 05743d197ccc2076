"""Candidate terms per language (CJK character n-grams), keyword candidates from false negatives."""

from __future__ import annotations

import random
from typing import Any

import pytest

from extproc.config.snapshot import Snapshot
from extproc.tuning.candidates import Example, find_candidates
from extproc.tuning.directions import UP, WEAK, find_directions
from extproc.tuning.lang import HAN, HANGUL, KANA, LATIN, NONE, detect_lang, terms
from tests.unit.tuning_data import FILLER, PRICED_CONFIG, chat, records


def examples(items: list[dict[str, object]]) -> list[Example]:
    out = []
    for record in records(items):
        assert record.chat is not None
        out.append(Example(record.chat, record.label == "strong"))
    return out


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Refactor the parser", LATIN),
        ("이 모듈을 리팩터링 해줘", HANGUL),
        ("Debug 이 코드 please now", HANGUL),
        ("帮我重构这个函数", HAN),
        ("このコードを説明してください", KANA),
        ("1234 !!", NONE),
    ],
    ids=["english", "korean", "korean-mixed", "chinese", "japanese", "none"],
)
def test_detect_lang(text: str, lang: str) -> None:
    assert detect_lang(text) == lang


def test_terms_english_words_without_stop_words() -> None:
    found = terms("Please explain the Kubernetes operator and the CRD it uses")
    assert {"kubernetes", "operator", "crd", "uses"} <= found
    assert not {"the", "and", "please", "explain", "it"} & found


def test_terms_korean_character_ngrams() -> None:
    found = terms("쿠버네티스를 설정해 주세요")
    assert {"쿠버", "쿠버네", "버네티", "네티스"} <= found
    assert "스를" not in found  # ends with the particle 를
    assert "주세" not in found  # a stop n-gram ("please")
    assert all(2 <= len(t) <= 3 for t in found)


def test_terms_chinese_character_ngrams() -> None:
    found = terms("请帮我部署容器编排的服务")
    assert {"容器", "编排", "容器编", "部署"} <= found
    assert "帮我" not in found  # a stop n-gram
    assert "排的" not in found  # ends with the particle 的
    assert "请帮" not in found  # starts with 请 ("please")


def test_terms_filtered_by_language() -> None:
    text = "deploy 容器编排 and 쿠버네티스"
    assert terms(text, frozenset({HAN})) == {t for t in terms(text) if t[0] in "容器编排"}
    assert "deploy" in terms(text, frozenset({LATIN}))


def test_candidates_find_planted_cjk_terms_from_false_negatives(
    default_snapshot: Snapshot,
) -> None:
    items = []
    for i in range(12):
        items.append(chat(f"쿠버네티스 클러스터 {i}번 설정", "strong"))
        items.append(chat(f"如何配置容器编排 第{i}个", "strong"))
        items.append(chat(f"오늘 날씨 {i}", "weak"))
        items.append(chat(f"今天天气怎么样 {i}", "weak"))
    items.append(chat("쿠버네티스 버전 확인", "weak"))
    result = find_candidates(default_snapshot, "v7", examples(items), min_count=3)
    assert result.false_negatives == 24
    top = {c.term: c for c in result.candidates[:6]}
    korean = [c for c in top.values() if c.lang == HANGUL]
    chinese = [c for c in top.values() if c.lang == HAN]
    assert korean and chinese
    assert all(c.term in "쿠버네티스 클러스터 설정" for c in korean)
    assert all(c.term in "如何配置容器编排" for c in chinese)
    # terms matching exactly the same requests are folded into the shortest one
    assert len([c for c in result.candidates if c.term in "쿠버네티스"]) == 1
    kube = next(c for c in result.candidates if c.term in "쿠버네티스")
    assert (kube.fixes, kube.strong, kube.weak, kube.new_fp) == (12, 12, 1, 1)
    assert kube.precision == pytest.approx(12 / 13)
    assert kube.net == 11


def test_current_keywords_that_cause_false_positives(default_snapshot: Snapshot) -> None:
    items = [chat(f"designer bag {i}", "weak") for i in range(5)]
    items += [chat("design the system", "strong"), chat("refactor it", "strong")]
    result = find_candidates(default_snapshot, "v7", examples(items), min_count=3)
    checks = {k.keyword: k for k in result.keywords}
    assert (checks["design"].strong, checks["design"].weak) == (1, 5)
    assert checks["design"].net_if_removed == 4
    assert checks["refactor"].net_if_removed == -1
    assert result.keywords[0].keyword == "design"
    assert checks["리팩터"].strong == checks["리팩터"].weak == 0


def test_candidates_language_filter(default_snapshot: Snapshot) -> None:
    items = [chat(f"kubernetes 容器编排 {i}", "strong") for i in range(5)]
    items += [chat("hello", "weak")]
    result = find_candidates(default_snapshot, "v7", examples(items), langs=frozenset({LATIN}))
    assert [c.term for c in result.candidates] == ["kubernetes"]


def two_ways(n: int = 600, seed: int = 4) -> list[dict[str, object]]:
    """v1 of PRICED_CONFIG sends > 100 characters up. Short requests with `kubernetes` need the
    strong tier (false negatives); long ones with `translate` do not (false positives)."""
    rng = random.Random(seed)
    items: list[dict[str, object]] = []
    for index in range(n):
        long = rng.random() < 0.5
        words = " ".join(rng.choice(FILLER) for _ in range(40 if long else 5))
        if long:
            safe = rng.random() < 0.4
            text = f"translate {words}" if safe else words
            label = "weak" if safe else "strong"
        else:
            hard = rng.random() < 0.3
            text = f"kubernetes {words}" if hard else words
            label = "strong" if hard else "weak"
        items.append({"id": f"t{index:04d}", "group": f"g{index // 3}", **chat(text, label)})
    return items


def test_candidates_in_both_directions_with_out_of_fold_gain(make_snapshot: Any) -> None:
    snapshot = make_snapshot(PRICED_CONFIG)
    data = examples(two_ways())
    keys = [f"g{i // 3}" for i in range(len(data))]
    found = find_directions(snapshot, "v1", data, keys=keys, folds=5, seed=1)
    assert found.folds == 5
    up = {t.term: t for t in found.up}
    weak = {t.term: t for t in found.weak}
    kube, safe = up["kubernetes"], weak["translate"]
    assert kube.direction == UP and safe.direction == WEAK
    # every short kubernetes request is a false negative; none is labelled weak
    assert kube.fixes == kube.strong and kube.breaks == 0 and kube.weak == 0
    # every long translate request is a false positive the rule to weak fixes, none broken
    assert safe.fixes == safe.weak and safe.breaks == 0 and safe.strong == 0
    assert kube.oof_folds == 5 and kube.oof_net == kube.net  # kept by every fold
    assert safe.oof_net == safe.net and found.weak[0].term == "translate"
    # filler words occur in both labels alike: out of fold they gain nothing the in-sample
    # figure does not already show, and far less than the planted term
    for term in found.weak[1:]:
        assert term.oof_net is not None and term.oof_net <= max(term.net, 0)
        assert term.oof_net < safe.oof_net / 2
    without = find_directions(snapshot, "v1", data, folds=0)
    assert without.folds == 0 and {t.oof_net for t in without.up} == {None}
