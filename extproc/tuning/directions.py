"""Keyword candidates in both directions, each with its gain out of fold.

- Up terms (`find_candidates`): mined from false negatives (target-labelled requests the version
  sends lower); as a keyword of the rule sending up, a term fixes the false negatives containing
  it and adds the default-labelled requests now sent low that contain it.
- Weak-safe terms (here): mined from false positives (requests the version sends up that are
  labelled with the default tier); as a rule sending them to the default tier, placed first, a
  term fixes the false positives containing it and breaks the true positives containing it.
  `net` = fixed - broken.

Out-of-fold gain: the records are split into K folds (seeded, by group key when given: a group is
never split). For each fold, terms are mined from the other folds' false negatives / positives
and kept when their net there is positive and they occur in `min_count` of them; a kept term's
net is then counted on the held-out fold. `oof_net` sums those held-out nets over the folds that
kept the term, and `oof_folds` says how many did: a term whose in-sample net does not survive out
of fold is fitting noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extproc.config.snapshot import Snapshot
from extproc.core.classify import classify, select_text
from extproc.tuning.candidates import Example, mine_terms, probe_hits
from extproc.tuning.lang import term_lang
from extproc.tuning.sample import record_key

UP, WEAK = "up", "weak"


@dataclass(frozen=True, slots=True)
class DirectedTerm:
    term: str
    lang: str
    direction: str  # "up" (a keyword sending up) or "weak" (a rule sending to the default)
    fixes: int  # misroutes it fixes (false negatives up / false positives down)
    breaks: int  # right decisions it breaks (new false positives / broken true positives)
    strong: int  # labelled records containing it, target label
    weak: int  # ... other labels
    oof_net: int | None = None
    oof_folds: int = 0

    @property
    def net(self) -> int:
        return self.fixes - self.breaks


@dataclass(slots=True)
class Directions:
    up: list[DirectedTerm]
    weak: list[DirectedTerm]
    folds: int
    false_negatives: int
    false_positives: int


def _tally(
    terms: set[str], hits: Sequence[tuple[str, ...]], rows: Sequence[tuple[bool, bool]], subset: int
) -> dict[str, list[int]]:
    """Per term over the records in `subset`: FN fixed, new FP, FP fixed, TP broken, and the
    records containing it by label (target, other)."""
    counts: dict[str, list[int]] = {}
    for index, (found, (positive, up)) in enumerate(zip(hits, rows, strict=True)):
        if not subset >> index & 1:
            continue
        for term in found:
            if term not in terms:
                continue
            c = counts.setdefault(term, [0, 0, 0, 0, 0, 0])
            c[4 if positive else 5] += 1
            slot = (2 if not positive else 3) if up else (0 if positive else 1)
            c[slot] += 1
    return counts


def _net(counts: list[int], direction: str) -> tuple[int, int]:
    return (counts[0], counts[1]) if direction == UP else (counts[2], counts[3])


def _mine(
    texts: Sequence[str],
    rows: Sequence[tuple[bool, bool]],
    subset: int,
    direction: str,
    min_count: int,
    langs: frozenset[str] | None,
) -> list[str]:
    wanted = (True, False) if direction == UP else (False, True)
    chosen = [
        text
        for index, (text, row) in enumerate(zip(texts, rows, strict=True))
        if subset >> index & 1 and row == wanted
    ]
    return mine_terms(chosen, min_count, langs)


def find_directions(
    snapshot: Snapshot,
    version: str,
    examples: Sequence[Example],
    *,
    keys: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    min_count: int = 3,
    langs: frozenset[str] | None = None,
) -> Directions:
    """Up and weak-safe terms of a version on labelled examples, with out-of-fold gains."""
    classifier = snapshot.classifiers[version]
    target = snapshot.tier_names[-1]
    texts = [select_text(e.chat.messages, classifier.text) for e in examples]
    rows = [(e.positive, classify(e.chat, classifier).tier == target) for e in examples]
    everything = (1 << len(examples)) - 1
    masks = [0] * max(folds, 0)
    for index, key in enumerate(keys or [str(i) for i in range(len(examples))]):
        if folds >= 2:
            masks[min(folds - 1, int(record_key(seed, key) * folds))] |= 1 << index
    fits = [everything] + [everything & ~m for m in masks if folds >= 2]
    mined = {d: [_mine(texts, rows, fit, d, min_count, langs) for fit in fits] for d in (UP, WEAK)}
    union = list(dict.fromkeys(t for d in mined.values() for pool in d for t in pool))
    hits = probe_hits(snapshot, classifier.text.value, union, [e.chat for e in examples])
    found: dict[str, list[DirectedTerm]] = {}
    for direction in (UP, WEAK):
        pools = mined[direction]
        full = _tally(set(pools[0]), hits, rows, everything)
        oof: dict[str, list[int]] = {}
        for held, fit, pool in zip(masks, fits[1:], pools[1:], strict=True):
            train = _tally(set(pool), hits, rows, fit)
            kept = set()
            for term, counts in train.items():
                fixes, breaks = _net(counts, direction)
                if fixes >= min_count and fixes > breaks:
                    kept.add(term)
            scored = _tally(kept, hits, rows, held)
            for term in kept:
                fixes, breaks = _net(scored.get(term, [0] * 6), direction)
                tally = oof.setdefault(term, [0, 0])
                tally[0] += fixes - breaks
                tally[1] += 1
        terms = []
        for term, counts in full.items():
            fixes, breaks = _net(counts, direction)
            if fixes < min_count:
                continue
            net_oof = oof.get(term)
            terms.append(
                DirectedTerm(
                    term,
                    term_lang(term),
                    direction,
                    fixes,
                    breaks,
                    counts[4],
                    counts[5],
                    net_oof[0] if net_oof else (0 if masks else None),
                    net_oof[1] if net_oof else 0,
                )
            )
        terms.sort(key=_rank)
        found[direction] = _fold_same(terms, hits, union)
    return Directions(
        up=found[UP],
        weak=found[WEAK],
        folds=len(masks),
        false_negatives=sum(p and not u for p, u in rows),
        false_positives=sum(u and not p for p, u in rows),
    )


def _rank(term: DirectedTerm) -> tuple[int, int, str]:
    gain = term.oof_net if term.oof_net is not None else term.net
    return (-gain, -term.net, term.term)


def _fold_same(
    terms: list[DirectedTerm], hits: Sequence[tuple[str, ...]], union: Sequence[str]
) -> list[DirectedTerm]:
    """Terms matching exactly the same records are folded into the shortest."""
    wanted = {t.term for t in terms}
    masks = dict.fromkeys(wanted, 0)
    for index, found in enumerate(hits):
        for term in found:
            if term in wanted:
                masks[term] |= 1 << index
    shortest: dict[int, str] = {}
    for term in sorted(wanted, key=lambda t: (len(t), t)):
        shortest.setdefault(masks[term], term)
    keep = set(shortest.values())
    return [t for t in terms if t.term in keep]
