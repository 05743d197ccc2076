"""Features of a chat request for the learned scorer: hashed n-grams and a few numbers.

Pure (numpy, no I/O) and bounded: whatever the body size, at most `WINDOW` characters of the user
text are hashed (the first `HEAD` and the last `TAIL`), so the cost of a request does not grow
with its length beyond joining its texts. Training (`extproc.tuning.train`) and the server call the
same `extract`, so a model sees at serve time exactly the features it was fitted on.

What is extracted:

- from the user text (every `user` message, joined with a space), lower-cased (ASCII and Latin-1
  letters; Hangul and Han have no case): character 1- to 4-grams over code points, so a Hangul
  syllable or a Han character is one character whatever its UTF-8 length; word 1- and 2-grams
  where the text has spaces (a word is a run of letters or digits of a spaced script: Latin,
  Hangul, Greek, Cyrillic, ...; Han and kana are not spaced and are covered by the character
  n-grams). Each n-gram is hashed (a polynomial hash over 64 bits, then Fibonacci hashing) to one
  of `2**bits` buckets; the buckets of one request are returned with repeats, each occurrence
  weighing `1/sqrt(occurrences)`.
- `DENSE_NAMES`: log lengths of the user text and of the system prompt separately (characters,
  UTF-8 bytes, estimated tokens), the number of messages and of user turns, whether the user text
  has a code block, and the shares of Latin, Hangul, Han and other letters in the hashed window.
  Lengths of a user text longer than the window are exact in characters; bytes and tokens are
  extrapolated from the window's mix of scripts.

No feature keeps any text: a bucket number cannot be turned back into the n-gram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Characters of the user text that are hashed: the first `HEAD` and the last `TAIL`.
HEAD = 1024
TAIL = 1024
WINDOW = HEAD + TAIL
#: Families of hashed features, in the order of `Features.offsets`.
FAMILIES = ("char1", "char2", "char3", "char4", "word1", "word2")
DENSE_NAMES = (
    "user_chars",
    "user_bytes",
    "user_tokens",
    "system_chars",
    "system_bytes",
    "system_tokens",
    "messages",
    "user_turns",
    "code_block",
    "script_latin",
    "script_hangul",
    "script_han",
    "script_other",
)
#: Roles whose text counts as the system prompt.
SYSTEM_ROLES = ("system", "developer")

U64 = np.uint64
_K = U64(0x9E3779B97F4A7C15)  # n-gram polynomial step (odd)
_MIX = U64(0xBF58476D1CE4E5B9)  # Fibonacci hashing multiplier (odd)
_WORD_BASE = U64(0x100000001B3)  # word hash polynomial base (odd, so invertible mod 2**64)
_WORD_SALT = U64(0x94D049BB133111EB)
_BIGRAM = U64(0xD6E8FEB86659FD93)

# Character classes of the Basic Multilingual Plane (code points above it share the last slot).
_PUNCT, _DIGIT, _LOWER, _UPPER, _LATIN, _LATIN_UPPER = 0, 1, 2, 3, 4, 5
_HANGUL, _HAN, _KANA, _LETTER, _SYMBOL = 6, 7, 8, 9, 10
_CLASSES = 11


def _class_table() -> npt.NDArray[np.intp]:
    table = np.full(0x10001, _SYMBOL, dtype=np.intp)
    table[:0x80] = _PUNCT
    table[ord("0") : ord("9") + 1] = _DIGIT
    table[ord("a") : ord("z") + 1] = _LOWER
    table[ord("A") : ord("Z") + 1] = _UPPER
    table[0xC0:0x250] = _LATIN
    table[0xC0:0xDF] = _LATIN_UPPER
    table[0xD7] = _SYMBOL  # multiplication sign
    table[0xF7] = _SYMBOL  # division sign
    table[0x370:0x2000] = _LETTER  # Greek, Cyrillic, Armenian, Hebrew, Arabic, Indic, Thai, ...
    table[0x1E00:0x1F00] = _LATIN  # Latin Extended Additional (Vietnamese)
    for start, end in ((0x1100, 0x1200), (0x3130, 0x3190), (0xA960, 0xA980), (0xAC00, 0xD7B0)):
        table[start:end] = _HANGUL
    for start, end in ((0x2E80, 0x2FE0), (0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00)):
        table[start:end] = _HAN
    table[0x3040:0x3100] = _KANA
    table[0x31F0:0x3200] = _KANA
    table[0xFF66:0xFFA0] = _KANA
    table[0x10000] = _SYMBOL  # every supplementary code point (emoji, rare Han) lands here
    return table


_CLASS = _class_table()
#: A code point of the Basic Multilingual Plane (or 0x10000 for any above it), lower-cased.
_LOWERED = np.arange(0x10001, dtype=np.uint64)
_LOWERED[np.isin(_CLASS, [_UPPER, _LATIN_UPPER])] += U64(32)
#: Classes that make up words (spaced scripts).
_WORDISH = np.zeros(_CLASSES, dtype=np.int8)
_WORDISH[[_DIGIT, _LOWER, _UPPER, _LATIN, _LATIN_UPPER, _HANGUL, _LETTER]] = 1


def _powers(count: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    inverse = pow(int(_WORD_BASE), -1, 1 << 64)
    with np.errstate(over="ignore"):
        base = np.full(count, _WORD_BASE, dtype=np.uint64)
        base[0] = 1
        powers = np.cumprod(base, dtype=np.uint64)
        inv = np.full(count, U64(inverse), dtype=np.uint64)
        inv[0] = 1
        inverses = np.cumprod(inv, dtype=np.uint64)
    return powers, inverses


_POW, _INV = _powers(WINDOW + 2)


@dataclass(frozen=True, slots=True, eq=False)
class Features:
    """The features of one request."""

    #: Bucket of every hashed n-gram occurrence (repeats kept), families in `FAMILIES` order.
    buckets: npt.NDArray[np.intp]
    #: Start of each family in `buckets` (for `np.add.reduceat`); families may be empty.
    offsets: tuple[int, ...]
    #: The weight of one occurrence: 1/sqrt(len(buckets)), or 0.0 without any.
    scale: float
    #: Values of `DENSE_NAMES`, unscaled.
    dense: tuple[float, ...]


def user_and_system(messages: tuple[tuple[str, str], ...]) -> tuple[str, str, int]:
    """(user text, system text, user turns) of a request's messages."""
    user = [text for role, text in messages if role == "user"]
    system = [text for role, text in messages if role in SYSTEM_ROLES and text]
    return " ".join([t for t in user if t]), " ".join(system), len(user)


def extract(messages: tuple[tuple[str, str], ...], bits: int) -> Features:
    """The features of a request (its (role, text) messages), hashed to `2**bits` buckets."""
    user, system, turns = user_and_system(messages)
    size = len(user)
    window = user if size <= WINDOW else f"{user[:HEAD]} {user[-TAIL:]}"
    points = np.frombuffer(window.encode("utf-32-le"), dtype=np.uint32)
    clipped = np.minimum(points, 0x10000)
    classes = _CLASS.take(clipped)
    low = _LOWERED.take(clipped)
    n = len(low)
    parts = [low]
    # (unsigned array arithmetic wraps modulo 2**64 silently, which is what hashing wants)
    prev = low
    for order in (2, 3, 4):
        prev = prev[:-1] * _K + low[order - 1 :] if n >= order else low[:0]
        parts.append(prev)
    words = _words(low, classes) if " " in window else low[:0]
    parts.append(words)
    parts.append(words[:-1] * _BIGRAM + words[1:] if len(words) > 1 else low[:0])
    hashes = np.concatenate(parts) * _MIX
    buckets = (hashes >> U64(64 - bits)).astype(np.intp)
    offsets, start = [], 0
    for part in parts:
        offsets.append(start)
        start += len(part)
    counts = np.bincount(classes, minlength=_CLASSES).tolist() if n else [0] * _CLASSES
    dense = _dense(window, counts, size, system, len(messages), turns)
    return Features(buckets, tuple(offsets), 1.0 / math.sqrt(start) if start else 0.0, dense)


def _words(low: npt.NDArray[np.uint64], classes: npt.NDArray[np.intp]) -> npt.NDArray[np.uint64]:
    """One hash per word: (prefix[end] - prefix[start]) / base**start, mod 2**64."""
    n = len(low)
    edges = np.zeros(n + 2, dtype=np.int8)
    _WORDISH.take(classes, out=edges[1:-1])
    bounds = np.flatnonzero(edges[1:] != edges[:-1])
    starts, ends = bounds[0::2], bounds[1::2]
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(low * _POW[:n], out=prefix[1:])
    hashed: npt.NDArray[np.uint64] = (prefix.take(ends) - prefix.take(starts)) * _INV.take(
        starts
    ) + _WORD_SALT
    return hashed


def _dense(
    window: str, counts: list[int], size: int, system: str, messages: int, turns: int
) -> tuple[float, ...]:
    n = len(window)
    ascii_count = sum(counts[:_LATIN])
    if n and ascii_count < n:
        stretch = size / n
        user_bytes = len(window.encode("utf-8")) * stretch
        user_wide = (n - ascii_count) * stretch
    else:
        user_bytes, user_wide = float(size), 0.0
    user_tokens = math.ceil((size - user_wide) / 4) + user_wide
    sys_chars = len(system)
    sys_bytes = sys_chars if system.isascii() else len(system.encode("utf-8"))
    sys_wide = (sys_bytes - sys_chars) / 2
    sys_tokens = math.ceil((sys_chars - sys_wide) / 4) + sys_wide
    latin = counts[_LOWER] + counts[_UPPER] + counts[_LATIN] + counts[_LATIN_UPPER]
    hangul, han = counts[_HANGUL], counts[_HAN]
    other = counts[_KANA] + counts[_LETTER]
    letters = latin + hangul + han + other
    share = 1.0 / letters if letters else 0.0
    log = math.log1p
    return (
        log(size),
        log(user_bytes),
        log(user_tokens),
        log(sys_chars),
        log(sys_bytes),
        log(sys_tokens),
        log(messages),
        log(turns),
        1.0 if "```" in window else 0.0,
        latin * share,
        hangul * share,
        han * share,
        other * share,
    )
