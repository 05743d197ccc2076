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
from typing import NamedTuple

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
#: What `DENSE_NAMES` count, packed per code point into one 64-bit number so that one sum counts
#: them all: 12 bits per field (a window has at most 1,025 characters), fields: wider than one
#: UTF-8 byte, then letters of the four script shares (Latin, Hangul, Han, other).
_FIELD = 12
_FIELD_MASK = (1 << _FIELD) - 1
_SCRIPT = np.zeros(_CLASSES, dtype=np.uint64)
_SCRIPT[[_LOWER, _UPPER, _LATIN, _LATIN_UPPER]] = 1 << _FIELD
_SCRIPT[_HANGUL] = 1 << 2 * _FIELD
_SCRIPT[_HAN] = 1 << 3 * _FIELD
_SCRIPT[[_KANA, _LETTER]] = 1 << 4 * _FIELD
_PACKED = _SCRIPT.take(_CLASS) + (_CODES >= 0x80).astype(np.uint64)
#: Per code point: its lowered code point times `_MIX` (every hash is finished by `* _MIX`, and
#: multiplication distributes over the n-gram polynomial modulo 2**32, so mixed characters build
#: mixed n-grams directly) and 1 inside a word.
_MIXED = (_LOWERED.astype(np.uint64) * int(_MIX) % (1 << 32)).astype(np.uint32)
_INSIDE = _WORDISH.take(_CLASS).astype(np.uint32)
#: ASCII letters, deleted by `bytes.translate` to count them in an ASCII window.
_ASCII_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))


class Features(NamedTuple):
    """The features of one request."""

    #: Bucket of every hashed n-gram occurrence (repeats kept), families in `FAMILIES` order.
    buckets: npt.NDArray[np.intp]
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


#: Most buckets a request can have: every n-gram of the window and two per word.
_MOST = 6 * (WINDOW + 1)
# numpy multiplies and shifts by an array faster than by a scalar, so the constants are arrays.
_KS = np.full(WINDOW + 1, _K, dtype=np.uint32)
_WORD_MIXES = np.full(WINDOW + 1, _WORD_MIX, dtype=np.uint32)
_BIGRAMS = np.full(WINDOW + 1, _BIGRAM, dtype=np.uint32)
#: Per `bits`: the shift (`hashes >> (32 - bits)`: the top bits pick the bucket), made on use.
_SHIFTS: dict[int, npt.NDArray[np.uint32]] = {}
_take = np.ndarray.take
_EVERY_FAMILY = tuple(range(len(FAMILIES)))
_multiply, _add, _shift = np.multiply, np.add, np.right_shift
_reduceat = np.add.reduceat


def _shifts(bits: int) -> npt.NDArray[np.uint32]:
    shifts = _SHIFTS.get(bits)
    if shifts is None:
        shifts = _SHIFTS[bits] = np.full(_MOST, 32 - bits, dtype=np.uint32)
    return shifts


def extract(messages: tuple[tuple[str, str], ...], bits: int) -> Features:
    """The features of a request (its (role, text) messages), hashed to `2**bits` buckets."""
    user, system, turns = user_and_system(messages)
    size = len(user)
    window = user if size <= WINDOW else f"{user[:HEAD]} {user[-TAIL:]}"
    n = len(window)
    padded, scripts, narrow, window_bytes = _encoded(window, n)
    chars = 4 * n - 6 if n > 2 else (n * (n + 1)) // 2
    if n > 1 and " " in window:
        inside = _take(_INSIDE, padded, None, None, "clip")
        starts = (inside[1:] > inside[:-1]).nonzero()[0]
        words = len(starts)
    else:
        words = 0
    count = chars + 2 * words - 1 if words else chars
    hashes = np.empty(count, dtype=np.uint32)
    _take(_MIXED, padded[1:], None, hashes[:n], "clip")
    offsets = _char_grams(hashes, n, chars)
    if words:
        _word_grams(hashes, n, chars, inside, starts)
    offsets += [chars, chars + words]
    # (into intp: numpy gathers by intp indices without converting them first)
    buckets = _shift(hashes, _shifts(bits)[:count], np.empty(count, dtype=np.intp))
    if n > 3 and words > 1:
        present = _EVERY_FAMILY
    else:
        sizes = (n, n - 1, n - 2, n - 3, words, words - 1)
        present = tuple(i for i, length in enumerate(sizes) if length > 0)
    dense = _dense(
        size,
        window_bytes,
        n - narrow,
        n,
        scripts,
        system,
        (len(messages), turns, "```" in window),
    )
    return Features(
        buckets,
        tuple(offsets),
        present,
        np.array([offsets[i] for i in present], dtype=np.intp),
        1.0 / math.sqrt(count) if count else 0.0,
        dense,
    )


def _encoded(
    window: str, n: int
) -> tuple[npt.NDArray[np.uint8] | npt.NDArray[np.uint32], tuple[int, int, int, int], int, int]:
    """The window's code points after a space (outside any word, so that word starts are where
    `inside` goes up), its letters by script, its one-byte characters and its UTF-8 size.

    (Unsigned array arithmetic wraps modulo 2**32 silently, which is what hashing wants; the
    tables end at 0x10000, where `mode="clip"` puts every code point above the BMP.)
    """
    if window.isascii():  # most traffic: one byte per character, counts without a table
        raw = window.encode("ascii")
        letters = n - len(raw.translate(None, _ASCII_LETTERS))
        return np.frombuffer(b" " + raw, dtype=np.uint8), (letters, 0, 0, 0), n, n
    return _encoded_wide(window, n)


def _encoded_wide(
    window: str, n: int
) -> tuple[npt.NDArray[np.uint32], tuple[int, int, int, int], int, int]:
    """`_encoded` for any text: 4 bytes per character, counts by one packed table and a sum."""
    padded = np.frombuffer(f" {window}".encode("utf-32-le"), dtype=np.uint32)
    packed = int(_take(_PACKED, padded, None, None, "clip").sum())
    mask = _FIELD_MASK
    wide = packed & mask
    scripts = (
        (packed >> _FIELD) & mask,
        (packed >> 2 * _FIELD) & mask,
        (packed >> 3 * _FIELD) & mask,
        packed >> 4 * _FIELD,
    )
    return padded, scripts, n - wide, len(window.encode("utf-8"))


def _char_grams(hashes: npt.NDArray[np.uint32], n: int, chars: int) -> list[int]:
    """Fill the 2- to 4-grams after the (mixed) characters in `hashes[:n]`; their starts."""
    low = hashes[:n]
    if n <= 2:  # (too short for 3- and 4-grams)
        if n == 2:
            _multiply(low[:1], _KS[:1], hashes[2:])
            _add(hashes[2:], low[1:], hashes[2:])
        return [0, n, chars, chars]
    previous = low
    for start, length in ((n, n - 1), (2 * n - 1, n - 2), (3 * n - 3, n - 3)):
        gram = hashes[start : start + length]
        _multiply(previous[:length], _KS[:length], gram)
        _add(gram, low[n - length :], gram)
        previous = gram
    return [0, n, 2 * n - 1, 3 * n - 3]


def _word_grams(
    hashes: npt.NDArray[np.uint32],
    n: int,
    chars: int,
    inside: npt.NDArray[np.uint32],
    starts: npt.NDArray[np.intp],
) -> None:
    """Fill the words and word pairs after the character n-grams in `hashes`.

    A word is a bag of its characters and pairs (order-sensitive enough for words, and one
    `reduceat` over the text instead of a hash per word): per character, its own hash and that
    of the pair it starts when both are inside the word; characters outside words weigh nothing.
    """
    words = len(starts)
    values = np.empty(n, dtype=np.uint32)
    _multiply(hashes[n : 2 * n - 1], inside[2:], values[:-1])
    values[-1] = 0
    _add(values, hashes[:n], values)
    _multiply(values, inside[1:], values)
    mixed = hashes[chars : chars + words]
    _reduceat(values, starts, 0, None, mixed)
    _multiply(mixed, _WORD_MIXES[:words], mixed)
    pair = hashes[chars + words :]
    _multiply(mixed[:-1], _BIGRAMS[: words - 1], pair)
    _add(pair, mixed[1:], pair)


def _dense(
    size: int,
    window_bytes: int,
    window_wide: int,
    n: int,
    scripts: tuple[int, int, int, int],
    system: str,
    counts: tuple[int, int, bool],
) -> tuple[float, ...]:
    """`DENSE_NAMES` from the window's UTF-8 size, its characters wider than one byte and its
    letters by script (Latin, Hangul, Han, other)."""
    if window_wide:  # lengths of a longer text extrapolated from the window's mix
        stretch = size / n
        user_bytes = window_bytes * stretch
        user_wide = window_wide * stretch
    else:
        user_bytes, user_wide = float(size), 0.0
    user_tokens = math.ceil((size - user_wide) / 4) + user_wide
    sys_chars = len(system)
    sys_bytes = sys_chars if system.isascii() else len(system.encode("utf-8"))
    sys_wide = (sys_bytes - sys_chars) / 2
    sys_tokens = math.ceil((sys_chars - sys_wide) / 4) + sys_wide
    letters = sum(scripts)
    share = 1.0 / letters if letters else 0.0
    latin, hangul, han, other = scripts
    messages, turns, code_block = counts
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
