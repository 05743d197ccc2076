"""Keyword candidates mined from false negatives, and current keywords that do not pay off.

A false negative is a request labelled with the version's target tier (the top tier) that the
version sent lower. Candidate terms (`lang.terms`: words, or character 2/3-grams for Korean,
Chinese and Japanese) are taken from the text the version reads, in false negatives; each one
that occurs in at least `min_count` of them is then counted over every labelled record with the
classifier's own matching (one probe keyword rule run through `classify()`), so the figures are
what the term would do as a keyword:

- `fixes`: false negatives containing it (they would move up);
- `strong` / `weak`: labelled records containing it, per label, and `precision` = strong share;
- `new_fp`: weak-labelled records the version sends low that contain it (they would move up,
  wrongly);
- `net` = fixes - new_fp: misroutes removed by adding the term to the keyword rule.

Terms hitting exactly the same records are folded into the shortest one. Current keywords are
scored by what removing each would change: records it alone sends up, by label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from extproc.config.snapshot import Classifier, RuleKind, Snapshot
from extproc.core.chat import ChatRequest
from extproc.core.classify import classify, select_text
from extproc.tuning.lang import term_lang
from extproc.tuning.lang import terms as extract_terms
from extproc.tuning.variants import binary_shape, compile_variant, is_enabled, version_spec

PROBE = "probe"
#: Most distinct terms counted exactly (the most frequent in false negatives).
POOL_LIMIT = 3000


@dataclass(frozen=True, slots=True)
class Candidate:
    term: str
    lang: str
    fixes: int
    strong: int
    weak: int
    new_fp: int

    @property
    def precision(self) -> float:
        return self.strong / (self.strong + self.weak) if self.strong + self.weak else 0.0

    @property
    def net(self) -> int:
        return self.fixes - self.new_fp


@dataclass(frozen=True, slots=True)
class KeywordCheck:
    keyword: str
    strong: int
    weak: int
    sole_strong: int  # records this keyword alone sends up, labelled strong (kept right)
    sole_weak: int  # ... labelled weak (false positives it causes)

    @property
    def precision(self) -> float:
        return self.strong / (self.strong + self.weak) if self.strong + self.weak else 0.0

    @property
    def net_if_removed(self) -> int:
        return self.sole_weak - self.sole_strong


@dataclass(slots=True)
class CandidateResult:
    version: str
    target: str
    default: str
    labelled: int
    positives: int
    false_negatives: int
    candidates: list[Candidate]
    keywords: list[KeywordCheck]


@dataclass(frozen=True, slots=True)
class Example:
    """A labelled request, as the miners and the tuner need it."""

    chat: ChatRequest
    #: labelled with the target tier (the one the version's rules send to)
    positive: bool
    #: labelled with the default tier; None: whenever not positive (two tiers)
    default_ok: bool | None = None
    #: quality gained by the target tier's model over the default's on it (0 when unknown)
    gain: float = 0.0


def probe_hits(
    snapshot: Snapshot, scope: str, words: Sequence[str], chats: Iterable[ChatRequest]
) -> list[tuple[str, ...]]:
    """For each request, the words occurring in its text, by the classifier's own matching."""
    if not words:
        return [() for _ in chats]
    target, default = snapshot.tier_names[-1], snapshot.tier_names[0]
    spec = {
        "text": scope,
        "default": default,
        "rules": [{"name": PROBE, "kind": "keyword", "tier": target, "keywords": list(words)}],
    }
    probe = compile_variant(snapshot, PROBE, spec)
    return [classify(chat, probe).keywords for chat in chats]


def mine_terms(
    texts: Iterable[str], min_count: int, langs: frozenset[str] | None, limit: int = POOL_LIMIT
) -> list[str]:
    """Terms occurring in at least `min_count` of the texts, most frequent first."""
    frequency: Counter[str] = Counter()
    for text in texts:
        frequency.update(extract_terms(text, langs))
    ranked = sorted(
        (t for t, c in frequency.items() if c >= min_count), key=lambda t: (-frequency[t], t)
    )
    return ranked[:limit]


def keyword_rules(spec: dict[str, Any], target: str) -> list[dict[str, Any]]:
    return [
        r
        for r in spec.get("rules", [])
        if r["kind"] == RuleKind.KEYWORD.value and r["tier"] == target and is_enabled(r)
    ]


def find_candidates(
    snapshot: Snapshot,
    version: str,
    examples: Sequence[Example],
    *,
    min_count: int = 3,
    langs: frozenset[str] | None = None,
) -> CandidateResult:
    classifier = snapshot.classifiers[version]
    target, default = _target(snapshot, classifier)
    scope = classifier.text.value
    decided = [classify(e.chat, classifier).tier == target for e in examples]
    fn_texts = [
        select_text(e.chat.messages, classifier.text)
        for e, up in zip(examples, decided, strict=True)
        if e.positive and not up
    ]
    pool = mine_terms(fn_texts, min_count, langs)
    spec = version_spec(snapshot, version)
    current = list(
        dict.fromkeys(str(k).lower() for r in keyword_rules(spec, target) for k in r["keywords"])
    )
    hits = probe_hits(snapshot, scope, [*pool, *current], [e.chat for e in examples])
    counts: dict[str, list[int]] = {t: [0, 0, 0, 0] for t in pool}
    masks: dict[str, int] = dict.fromkeys(pool, 0)
    for index, (example, up, found) in enumerate(zip(examples, decided, hits, strict=True)):
        for term in found:
            tally = counts.get(term)
            if tally is None:
                continue
            masks[term] |= 1 << index
            tally[1 if example.positive else 2] += 1
            if not up:
                tally[0 if example.positive else 3] += 1
    shortest: dict[int, str] = {}
    for term in sorted(pool, key=lambda t: (len(t), t)):
        shortest.setdefault(masks[term], term)
    candidates = [
        Candidate(t, term_lang(t), *counts[t])
        for t in shortest.values()
        if counts[t][0] >= min_count
    ]
    candidates.sort(key=lambda c: (-c.net, -c.precision, -c.fixes, c.term))
    return CandidateResult(
        version=version,
        target=target,
        default=default,
        labelled=len(examples),
        positives=sum(e.positive for e in examples),
        false_negatives=len(fn_texts),
        candidates=candidates,
        keywords=_check_keywords(snapshot, version, spec, target, examples, current, hits),
    )


def _target(snapshot: Snapshot, classifier: Classifier) -> tuple[str, str]:
    shape = binary_shape(classifier, snapshot.tier_names)
    if shape is not None:
        return shape
    return snapshot.tier_names[-1], classifier.default


def _check_keywords(
    snapshot: Snapshot,
    version: str,
    spec: dict[str, Any],
    target: str,
    examples: Sequence[Example],
    current: list[str],
    hits: list[tuple[str, ...]],
) -> list[KeywordCheck]:
    if not current:
        return []
    rules = keyword_rules(spec, target)
    spec["rules"] = [r for r in spec.get("rules", []) if all(r is not k for k in rules)]
    without = compile_variant(snapshot, version, spec)
    wanted = set(current)
    checks = {k: [0, 0, 0, 0] for k in current}
    for example, found in zip(examples, hits, strict=True):
        mine = [k for k in found if k in wanted]
        for keyword in mine:
            checks[keyword][0 if example.positive else 1] += 1
        if len(mine) == 1 and classify(example.chat, without).tier != target:
            checks[mine[0]][2 if example.positive else 3] += 1
    result = [KeywordCheck(k, *checks[k]) for k in current]
    result.sort(key=lambda c: (-c.net_if_removed, c.keyword))
    return result
