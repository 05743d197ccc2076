"""Near-duplicate text without downloaded weights: character 3-gram sets, MinHash and LSH (pure).

A text becomes the set of its character 3-grams after NFKC, case folding and whitespace
collapsing (any script: English, Korean and Chinese alike). Two texts are compared by the cosine
of those sets, |A ∩ B| / sqrt(|A| |B|). Finding candidates among many stored texts uses a
MinHash signature of 24 values split into 8 bands of 3: two texts become candidates when one
band is equal, which for a Jaccard similarity of 0.7 (a cosine near 0.82) happens with
probability 0.97 and for 0.8 above 0.99; every candidate is then checked with the exact cosine.

The signature is one-permutation MinHash: each gram is hashed once more, the hash range is cut
into 24 equal bins, and a bin's value is the smallest hash in it; an empty bin borrows the value
of the next non-empty one (wrapping round), so short texts still fill every band. With the
hashes sorted that is one `searchsorted` instead of 24 hash functions over every gram.

Hashes are arithmetic on code points (never Python's salted `hash`), so replicas agree; a
replica computes the bands of the gram sets it receives itself.
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

_K1, _K2, _K3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B1)
#: the signature's own hash of a gram (odd: a bijection of uint64, its top bits mix every bit)
_MIX = np.uint64(0xD6E8FEB86659FD93)
#: the lower edges of the signature's bins over the uint64 range
_EDGES = np.array([(i << 64) // HASHES for i in range(HASHES)], dtype=np.uint64)


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
    mixed: npt.NDArray[np.uint64] = points[:-2] * _K1 ^ points[1:-1] * _K2 ^ points[2:] * _K3
    mixed.sort()
    if mixed.size > 1:
        distinct = np.empty(mixed.size, dtype=np.bool_)
        distinct[0] = True
        np.not_equal(mixed[1:], mixed[:-1], out=distinct[1:])
        mixed = mixed[distinct]
    return mixed


def shingle(text: str) -> Shingled:
    return from_grams(grams(text))


def from_grams(values: npt.NDArray[np.uint64]) -> Shingled:
    """The bands of a gram set (a text's, or one received from another replica)."""
    if values.size:
        hashed = values * _MIX
        hashed.sort()
        picked = hashed.take(hashed.searchsorted(_EDGES), mode="wrap")
    else:
        picked = np.zeros(HASHES, dtype=np.uint64)
    signature = picked.tobytes()
    width = ROWS * 8
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
