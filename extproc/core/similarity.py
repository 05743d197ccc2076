"""Near-duplicate text without downloaded weights: character 3-gram sets, MinHash and LSH (pure).

A text becomes the set of its character 3-grams after NFKC, case folding and whitespace
collapsing (any script: English, Korean and Chinese alike). Two texts are compared by the cosine
of those sets, |A ∩ B| / sqrt(|A| |B|). Finding candidates among many stored texts uses MinHash
(24 hash functions) split into 8 bands of 3: two texts become candidates when one band is
equal, which for a Jaccard similarity of 0.7 (a cosine near 0.82) happens with probability 0.97
and for 0.8 above 0.99; every candidate is then checked with the exact cosine.

Hashes are arithmetic on code points (never Python's salted `hash`), so replicas agree.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BANDS = 8
ROWS = 3
HASHES = BANDS * ROWS
#: a text is cut to this many characters before shingling (the cost stays bounded)
MAX_CHARS = 8192

_rng = np.random.default_rng(0x5EED)
_A = (_rng.integers(1, 2**63, size=HASHES, dtype=np.uint64) | np.uint64(1)).reshape(HASHES, 1)
_B = _rng.integers(0, 2**63, size=HASHES, dtype=np.uint64).reshape(HASHES, 1)
_K1, _K2, _K3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B1)


@dataclass(frozen=True, slots=True, eq=False)
class Shingled:
    """One text's 3-gram set (sorted unique uint64) and its LSH band keys."""

    grams: npt.NDArray[np.uint64]
    bands: tuple[bytes, ...]


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text[:MAX_CHARS]).casefold().split())


def grams(text: str) -> npt.NDArray[np.uint64]:
    """The sorted, unique 3-gram hashes of a text (one gram for texts under 3 characters)."""
    points = np.frombuffer(normalize(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if points.size < 3:
        points = np.concatenate([points, np.zeros(3 - points.size, dtype=np.uint64)])
    mixed = points[:-2] * _K1 ^ points[1:-1] * _K2 ^ points[2:] * _K3
    result: npt.NDArray[np.uint64] = np.unique(mixed)
    return result


def shingle(text: str) -> Shingled:
    return from_grams(grams(text))


def from_grams(values: npt.NDArray[np.uint64]) -> Shingled:
    """The bands of a gram set (a text's, or one received from another replica)."""
    signature = ((_A * values + _B) >> np.uint64(32)).min(axis=1).astype(np.uint32).tobytes()
    width = ROWS * 4
    bands = tuple(
        bytes((band,)) + signature[band * width : (band + 1) * width] for band in range(BANDS)
    )
    return Shingled(values, bands)


def cosine(left: npt.NDArray[np.uint64], right: npt.NDArray[np.uint64]) -> float:
    """Cosine of two gram sets (sorted unique arrays)."""
    if not left.size or not right.size:
        return 0.0
    common = np.intersect1d(left, right, assume_unique=True).size
    return float(common / np.sqrt(left.size * right.size))
