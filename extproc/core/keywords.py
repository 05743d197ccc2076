"""Case-insensitive keyword search over message text, in any script.

Semantics are exactly "keyword occurs in `text.lower()`" (Python's Unicode lower-casing), but the
common case runs on UTF-8 bytes: ASCII-only lower-casing plus one Aho–Corasick pass. The bytes
path is only taken when it provably gives the same answer: every non-ASCII keyword character is
uncased (Hangul, Han, ...) and the text holds none of the two characters whose Unicode lower case
is ASCII (U+0130 `İ` and U+212A `K`). Otherwise the text is lower-cased as `str`.
"""

from __future__ import annotations

from collections.abc import Iterable

import ahocorasick_rs

# UTF-8 of U+0130 (lower: "i̇") and U+212A KELVIN SIGN (lower: "k").
_LOWERS_TO_ASCII = (b"\xc4\xb0", b"\xe2\x84\xaa")
_COMBINING_DOT = "\u0307"


def _needs_unicode_lowering(keyword: str) -> bool:
    return any(
        ord(ch) > 127 and (ch.lower() != ch or ch.upper() != ch or ch == _COMBINING_DOT)
        for ch in keyword
    )


class KeywordMatcher:
    """A compiled, immutable set of keywords."""

    __slots__ = ("_automaton", "_count", "_unicode", "keywords")

    def __init__(self, keywords: Iterable[str]) -> None:
        lowered: list[str] = []
        for keyword in keywords:
            low = keyword.lower()
            if not low:
                raise ValueError("empty keyword")
            if low not in lowered:
                lowered.append(low)
        if not lowered:
            raise ValueError("no keywords")
        self.keywords: tuple[str, ...] = tuple(lowered)
        self._count = len(lowered)
        # The sentinels ride along in the same pass: finding one sends the text down the
        # Unicode path, so the common case costs one scan.
        patterns = [k.encode("utf-8") for k in lowered] + list(_LOWERS_TO_ASCII)
        self._automaton = ahocorasick_rs.BytesAhoCorasick(patterns)
        self._unicode = any(_needs_unicode_lowering(k) for k in lowered)

    def search(self, text: str, data: bytes) -> tuple[str, ...]:
        """Distinct keywords occurring in `text.lower()`, in order of first occurrence.

        `data` is `text` encoded as UTF-8 (the caller usually has it already).
        """
        if self._unicode and not text.isascii():
            return self._found(text.lower().encode("utf-8"))
        matches = self._automaton.find_matches_as_indexes(data.lower(), overlapping=True)
        if not matches:
            return ()
        count = self._count
        if any(index >= count for index, _start, _end in matches):
            return self._found(text.lower().encode("utf-8"))
        return self._ordered(matches)

    def _found(self, haystack: bytes) -> tuple[str, ...]:
        matches = self._automaton.find_matches_as_indexes(haystack, overlapping=True)
        count = self._count
        return self._ordered([m for m in matches if m[0] < count])

    def _ordered(self, matches: list[tuple[int, int, int]]) -> tuple[str, ...]:
        if not matches:
            return ()
        if len(matches) == 1:
            return (self.keywords[matches[0][0]],)
        seen: dict[str, None] = {}
        for index, _start, _end in sorted(matches, key=lambda m: m[1]):
            seen.setdefault(self.keywords[index], None)
        return tuple(seen)
