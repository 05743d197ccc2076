"""Features of a chat request for the learned scorer: hashed n-grams and a few numbers.

Pure (numpy, no I/O) and bounded: whatever the body size, at most `WINDOW` characters of the user
text are hashed (the first `HEAD` and the last `TAIL`, 512 each), so the cost of a request does
not grow with its length beyond joining its texts. Training (`extproc.tuning.train`) and the
server call the same `extract`, so a model sees at serve time exactly the features it was fitted
on.

What is extracted:

- from the user text (every `user` message, joined with a space), lower-cased (ASCII and Latin-1
  letters; Hangul and Han have no case): character 1- to 4-grams over code points, so a Hangul
  syllable or a Han character is one character whatever its UTF-8 length; word 1- and 2-grams
  where the text has spaces (a word is a run of letters or digits of a spaced script: Latin,
  Hangul, Greek, Cyrillic, ...; Han and kana are not spaced and are covered by the character
  n-grams). Each n-gram is hashed (a polynomial hash over 32 bits, then Fibonacci hashing) to one
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
HEAD = 512
TAIL = 512
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

U32 = np.uint32
_K = U32(0x9E3779B1)  # n-gram polynomial step (odd)
_MIX = U32(0x85EBCA6B)  # Fibonacci hashing multiplier (odd)
_WORD_MIX = U32(0xC2B2AE35)  # words and n-grams land on other buckets
_BIGRAM = U32(0x27D4EB2F)

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
_LOWERED = np.arange(0x10001, dtype=np.uint32)
_LOWERED[np.isin(_CLASS, [_UPPER, _LATIN_UPPER])] += U32(32)
#: Classes that make up words (spaced scripts).
_WORDISH = np.zeros(_CLASSES, dtype=np.uint32)
_WORDISH[[_DIGIT, _LOWER, _UPPER, _LATIN, _LATIN_UPPER, _HANGUL, _LETTER]] = 1
_CODES = np.arange(0x10001)
#: What `DENSE_NAMES` count, in one number per code point for one `bincount`:
#: group * 4 + (UTF-8 bytes - 1), groups: 0 not a letter, then the four script shares.
_GROUP = np.zeros(_CLASSES, dtype=np.intp)
_GROUP[[_LOWER, _UPPER, _LATIN, _LATIN_UPPER]] = 1
_GROUP[_HANGUL] = 2
_GROUP[_HAN] = 3
_GROUP[[_KANA, _LETTER]] = 4
_GROUPS = 5
_COUNTED = _GROUP.take(_CLASS) * 4 + np.select(
    [_CODES < 0x80, _CODES < 0x800, _CODES < 0x10000], [0, 1, 2], 3
)
#: One lookup per character gives all three: bits 0-16 the lowered code point, bits 20-24
#: `_COUNTED`, bit 25 set inside a word.
_LOW_BITS = U32(0x1FFFF)
_COUNTED_SHIFT = U32(20)
_IN_WORD = U32(1 << 25)
_PACKED = (
    _LOWERED | (_COUNTED.astype(np.uint32) << _COUNTED_SHIFT) | (_WORDISH.take(_CLASS) << U32(25))
).astype(np.uint32)


@dataclass(frozen=True, slots=True, eq=False)
class Features:
    """The features of one request."""

    #: Bucket of every hashed n-gram occurrence (repeats kept), families in `FAMILIES` order.
    buckets: npt.NDArray[np.uint32]
    #: Start of each family in `buckets`, one per `FAMILIES`; families may be empty.
    offsets: tuple[int, ...]
    #: The families that are not empty, and their starts (for `np.add.reduceat`).
    present: tuple[int, ...]
    starts: npt.NDArray[np.intp]
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
    # (unsigned array arithmetic wraps modulo 2**32 silently, which is what hashing wants; the
    # tables end at 0x10000, where `mode="clip"` puts every code point above the BMP)
    codes = np.frombuffer(window.encode("utf-32-le"), dtype=np.uint32)
    n = len(codes)
    packed = np.empty(n + 1, dtype=np.uint32)  # packed[0]: outside any word
    packed[0] = 0
    _PACKED.take(codes, out=packed[1:], mode="clip")
    low = packed[1:] & _LOW_BITS
    parts = [low]
    prev = low
    for order in (2, 3, 4):
        prev = prev[:-1] * _K + low[order - 1 :]
        parts.append(prev)
    if " " in window:
        words = _words(packed, low, parts[1])
        parts += [words, words[:-1] * _BIGRAM + words[1:]]
    hashes = np.concatenate(parts)
    hashes *= _MIX
    hashes >>= U32(32 - bits)
    offsets, present, starts, start = [], [], [], 0
    for index, part in enumerate(parts):
        offsets.append(start)
        if len(part):
            present.append(index)
            starts.append(start)
        start += len(part)
    offsets += [start] * (len(FAMILIES) - len(offsets))
    # bins 0-19: `_COUNTED` outside words, 32-51: inside
    binned = np.bincount(packed[1:] >> _COUNTED_SHIFT, minlength=64).tolist()
    counts = [
        a + b for a, b in zip(binned[: _GROUPS * 4], binned[32 : 32 + _GROUPS * 4], strict=True)
    ]
    dense = _dense(n, counts, size, system, len(messages), turns, "```" in window)
    return Features(
        hashes,
        tuple(offsets),
        tuple(present),
        np.array(starts, dtype=np.intp),
        1.0 / math.sqrt(start) if start else 0.0,
        dense,
    )


def _words(
    packed: npt.NDArray[np.uint32], low: npt.NDArray[np.uint32], pairs: npt.NDArray[np.uint32]
) -> npt.NDArray[np.uint32]:
    """One hash per word: the sum of its characters and of its character pairs' hashes.

    (A bag of characters and pairs: order-sensitive enough for words, and one `reduceat` over
    the text instead of a hash per word; characters outside words weigh nothing.)
    """
    flags = packed >= _IN_WORD  # flags[0] is False: a word starts where flags go up
    inside = flags[1:]
    values = low * inside
    values[:-1] += pairs * (inside[:-1] & inside[1:])
    starts = np.flatnonzero(inside > flags[:-1])
    if not len(starts):
        return values[:0]
    hashed: npt.NDArray[np.uint32] = np.add.reduceat(values, starts, dtype=np.uint32)
    hashed *= _WORD_MIX
    return hashed


def _dense(
    n: int,
    counts: list[int],
    size: int,
    system: str,
    messages: int,
    turns: int,
    code_block: bool,
) -> tuple[float, ...]:
    """`DENSE_NAMES` from the window's counts by group and UTF-8 width (`_COUNTED`)."""
    ascii_count = sum(counts[0::4])
    if n and ascii_count < n:
        stretch = size / n
        window_bytes = n + sum(counts[1::4]) + 2 * sum(counts[2::4]) + 3 * sum(counts[3::4])
        user_bytes = window_bytes * stretch
        user_wide = (n - ascii_count) * stretch
    else:
        user_bytes, user_wide = float(size), 0.0
    user_tokens = math.ceil((size - user_wide) / 4) + user_wide
    sys_chars = len(system)
    sys_bytes = sys_chars if system.isascii() else len(system.encode("utf-8"))
    sys_wide = (sys_bytes - sys_chars) / 2
    sys_tokens = math.ceil((sys_chars - sys_wide) / 4) + sys_wide
    latin, hangul, han, other = (
        sum(counts[4:8]),
        sum(counts[8:12]),
        sum(counts[12:16]),
        sum(counts[16:20]),
    )
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
        1.0 if code_block else 0.0,
        latin * share,
        hangul * share,
        han * share,
        other * share,
    )
