"""Character 3-gram similarity: stable across processes, script-independent, bounded."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from extproc.core.similarity import BANDS, HASHES, MAX_CHARS, cosine, from_grams, grams, shingle


def test_identical_texts_are_similar_and_different_ones_are_not() -> None:
    a = shingle("How do I reverse a list in Python?")
    assert cosine(a.grams, shingle("How do I reverse a list in Python?").grams) == 1.0
    assert cosine(a.grams, shingle("how do i reverse a LIST in python ?").grams) > 0.85
    assert cosine(a.grams, shingle("What is the boiling point of water?").grams) < 0.3


def test_korean_and_chinese_are_compared_too() -> None:
    korean = shingle("파이썬에서 리스트를 뒤집는 방법은 무엇인가요?")
    assert (
        cosine(korean.grams, shingle("파이썬에서 리스트를 뒤집는 방법은 무엇인가요 ?").grams) > 0.8
    )
    chinese = shingle("如何在Python中反转列表？")
    assert cosine(chinese.grams, korean.grams) < 0.2


def test_similar_texts_share_a_band_and_bands_are_stable_across_processes() -> None:
    text = "A farmer has 17 sheep and buys 5 more. How many sheep does the farmer have now?"
    near = shingle(text.replace("How many", "How many of the"))
    assert len(shingle(text).bands) == BANDS
    assert set(shingle(text).bands) & set(near.bands)
    script = f"from extproc.core.similarity import shingle;print(shingle({text!r}).bands[0].hex())"
    other = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert other == shingle(text).bands[0].hex()


def test_short_and_huge_texts_are_bounded() -> None:
    assert grams("a").size == 1
    assert grams("").size == 1
    huge = grams("x" * (MAX_CHARS * 10) + "tail")
    assert huge.size == 1  # only the first MAX_CHARS characters count
    assert cosine(np.array([], dtype=np.uint64), grams("abc")) == 0.0


def _reference_signature(values: list[int]) -> list[int]:
    """One-permutation MinHash in plain Python: per bin of the hash range the smallest hash,
    an empty bin taking the next non-empty bin's (wrapping round)."""
    hashed = sorted((v * 0xD6E8FEB86659FD93) % (1 << 64) for v in values)
    edges = [(i << 64) // HASHES for i in range(HASHES)] + [1 << 64]
    found = [
        min((h for h in hashed if edges[b] <= h < edges[b + 1]), default=None)
        for b in range(HASHES)
    ]
    result = []
    for b in range(HASHES):
        for step in range(HASHES):
            value = found[(b + step) % HASHES]
            if value is not None:
                result.append(value)
                break
    return result


def test_the_signature_is_each_bins_minimum_and_empty_bins_borrow_the_next() -> None:
    rng = np.random.default_rng(3)
    for size in (1, 2, 5, 30, 400):
        values = np.unique(rng.integers(0, 2**63, size=size, dtype=np.uint64))
        bands = from_grams(values).bands
        signature = np.frombuffer(b"".join(band[1:] for band in bands), dtype=np.uint64)
        assert signature.tolist() == _reference_signature(values.tolist())
        assert [band[0] for band in bands] == list(range(BANDS))
    assert len(set(from_grams(np.array([7], dtype=np.uint64)).bands)) == BANDS  # band ids differ
    empty = from_grams(np.array([], dtype=np.uint64))
    assert len(empty.bands) == BANDS
