"""Candidate terms per language (CJK character n-grams), keyword candidates from false negatives."""

from __future__ import annotations

import pytest

from extproc.config.snapshot import Snapshot
from extproc.tuning.candidates import Example, find_candidates
from extproc.tuning.lang import HAN, HANGUL, KANA, LATIN, NONE, detect_lang, terms
from tests.unit.tuning_data import chat, records


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
