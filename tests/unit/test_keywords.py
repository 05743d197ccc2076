"""The byte-level fast path must answer exactly like `keyword in text.lower()`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.keywords import KeywordMatcher

ALPHABET = st.sampled_from(
    [*list("abcdeKRFİIıΣσςÄäßẞ "), "리", "팩", "터", "重", "构", "K", "̇", "É", "é"]
)
WORDS = st.text(ALPHABET, min_size=1, max_size=4)


def naive(keywords: list[str], text: str) -> set[str]:
    low = text.lower()
    return {k.lower() for k in keywords if k.lower() in low}


@settings(max_examples=400, deadline=None)
@given(keywords=st.lists(WORDS, min_size=1, max_size=5), text=st.text(ALPHABET, max_size=30))
def test_matcher_equals_unicode_lower_substring(keywords: list[str], text: str) -> None:
    matcher = KeywordMatcher(keywords)
    found = matcher.search(text, text.encode())
    assert set(found) == naive(keywords, text)
    assert len(found) == len(set(found))


def test_kelvin_sign_and_dotted_capital_i_fold_like_python() -> None:
    matcher = KeywordMatcher(["kit", "i̇x"])
    text = "\u212aIT and \u0130X"
    assert matcher.search(text, text.encode()) == ("kit", "i̇x")


def test_found_keywords_are_in_text_order() -> None:
    matcher = KeywordMatcher(["zeta", "alpha"])
    text = "alpha then zeta then alpha"
    assert matcher.search(text, text.encode()) == ("alpha", "zeta")


def test_duplicate_keywords_collapse() -> None:
    assert KeywordMatcher(["Debug", "debug", "DEBUG"]).keywords == ("debug",)
