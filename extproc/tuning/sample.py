"""A seeded, stratified sample of traces for a labelling sheet (written by `sheet`).

Every record gets a random key from `blake2b(seed, id)`, so the sample depends on the seed and
the records, not on their order. Each record belongs to exactly one stratum, the first of:

1. `suspect`: flagged `fn_suspect` or `fp_suspect` by the server (decision logs), on the request
   record itself or by a later `kind: "feedback"` or `kind: "gate"` record with the same id
   (`feedback_suspects` reads those in a first pass; they are never rows themselves);
2. `long`: among the longest requests (characters at or above the 95th percentile);
3. `rare:<value>`: a value of the segment field (default `source`) under 5 % of records;
4. `tier:<tier>`: by decided tier (the logged `tier` of a decision log, else the classifier's).

A `tail` share of the sheet (default 30 %) goes to strata 1-3 in equal parts, the rest to the
tiers in equal parts, so a tier that takes 3 % of traffic still gets half of the body rows: the
sheet over-represents the tail and the minority tier on purpose. Each row carries a `weight`
(estimated stratum population / rows drawn from it); `cascade eval --weight weight` turns the
labelled sheet back into population estimates.

Memory is bounded by the sheet size: per stratum only the candidates with the smallest keys are
kept, plus a uniform reservoir of 20,000 (key, length, tier, flags) tuples to estimate the
length percentile and the strata sizes.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc.config.snapshot import Classifier
from extproc.core.classify import classify
from extproc.tuning.dataset import Record

RESERVOIR = 20_000


@dataclass(frozen=True, slots=True)
class SampleOptions:
    n: int = 100
    seed: int = 0
    tail: float = 0.3
    long_quantile: float = 0.95
    rare_share: float = 0.05
    segment: str | None = "source"


@dataclass(slots=True)
class _Item:
    key: float
    record: Record
    tier: str
    decided_by: str
    rule: str
    keywords: str
    chars: int
    suspect: str  # "", "fn", "fp" or "fn+fp"
    segment: str | None


@dataclass(slots=True)
class SampleRow:
    item: _Item
    stratum: str
    weight: float


@dataclass(slots=True)
class SampleResult:
    rows: list[SampleRow]
    records: int
    strata: dict[str, tuple[float, int]]  # stratum -> (estimated population, rows)
    long_chars: int
    rare: list[str] = field(default_factory=list)


def record_key(seed: int, record_id: str) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Smallest:
    """The `size` items with the smallest keys seen so far."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[tuple[float, int, Any]] = []
        self._count = 0

    def offer(self, key: float, value: Any) -> None:
        self._count += 1
        entry = (-key, self._count, value)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif -self._heap[0][0] > key:
            heapq.heapreplace(self._heap, entry)

    def values(self) -> list[Any]:
        return [value for _k, _c, value in sorted(self._heap, key=lambda e: -e[0])]


FEEDBACK = "feedback"
#: Decision-log lines that annotate a request logged on its own line: feedback, and the
#: confidence gate's verdict (an escalation flags the request `fn_suspect`).
ANNOTATIONS = (FEEDBACK, "gate")


def suspicion(record: Record) -> str:
    """`fn`, `fp`, `fn+fp` or "" from a record's `fn_suspect` and `fp_suspect` flags."""
    kinds = [k for k in ("fn", "fp") if record.flag(f"{k}_suspect")]
    return "+".join(kinds)


def feedback_suspects(records: Iterable[Record]) -> dict[str, str]:
    """Ids that feedback (or gate) records of a decision log flag as suspected misroutes."""
    return {r.id: s for r in records if r.get("kind") in ANNOTATIONS and (s := suspicion(r))}


class Sampler:
    def __init__(
        self,
        options: SampleOptions,
        classifier: Classifier | None,
        flagged: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options
        self.classifier = classifier
        self.flagged = flagged or {}
        n = max(1, options.n)
        self.records = 0
        self.tiers: dict[str, _Smallest] = {}
        self.suspects = _Smallest(2 * n)
        self.longest: list[tuple[int, float, int, _Item]] = []  # min-heap by length
        self.long_size = max(5 * n, 500)
        self.segments: dict[str, _Smallest] = {}
        self.segment_counts: dict[str, int] = {}
        self.reservoir = _Smallest(RESERVOIR)

    def add(self, record: Record) -> None:
        if record.get("kind") in ANNOTATIONS:
            return
        item = self._item(record)
        self.records += 1
        n = max(1, self.options.n)
        self.tiers.setdefault(item.tier, _Smallest(3 * n)).offer(item.key, item)
        if item.suspect:
            self.suspects.offer(item.key, item)
        entry = (item.chars, -item.key, self.records, item)
        if len(self.longest) < self.long_size:
            heapq.heappush(self.longest, entry)
        elif entry[:2] > self.longest[0][:2]:
            heapq.heapreplace(self.longest, entry)
        if item.segment is not None:
            seen = self.segment_counts.get(item.segment)
            if seen is not None or len(self.segment_counts) < 10_000:
                self.segment_counts[item.segment] = (seen or 0) + 1
                self.segments.setdefault(item.segment, _Smallest(2 * n)).offer(item.key, item)
        self.reservoir.offer(item.key, (item.chars, item.tier, item.suspect, item.segment))

    def _item(self, record: Record) -> _Item:
        tier, decided_by, rule, keywords = "unknown", "", "", ""
        chars = int(record.number("chars") or 0)
        if record.logged_tier is not None:
            tier, decided_by = record.logged_tier, "logged"
            rule = str(record.get("rule") or "")
            found = record.get("keywords")
            keywords = " ".join(map(str, found)) if isinstance(found, list) else str(found or "")
        elif record.chat is not None and self.classifier is not None:
            decision = classify(record.chat, self.classifier)
            tier, decided_by, rule = decision.tier, decision.classifier, decision.rule
            keywords, chars = " ".join(decision.keywords), decision.chars
        if record.chat is not None and not chars:
            chars = sum(len(text) for _role, text in record.chat.messages)
        segment = None
        if self.options.segment:
            value = record.get(self.options.segment)
            segment = None if value is None or value == "" else str(value)
        return _Item(
            key=record_key(self.options.seed, record.id),
            record=record,
            tier=tier,
            decided_by=decided_by,
            rule=rule,
            keywords=keywords,
            chars=chars,
            suspect=suspicion(record) or self.flagged.get(record.id, ""),
            segment=segment,
        )

    def select(self) -> SampleResult:
        options = self.options
        reservoir = self.reservoir.values()
        lengths = sorted(meta[0] for meta in reservoir)
        long_chars = (
            lengths[min(len(lengths) - 1, int(options.long_quantile * len(lengths)))]
            if lengths
            else 0
        )
        long_chars = max(long_chars, 1)
        rare = sorted(
            v
            for v, c in self.segment_counts.items()
            if self.records and c / self.records < options.rare_share
        )
        rare_set = set(rare)

        def stratum(chars: int, tier: str, suspect: str, segment: str | None) -> str:
            if suspect:
                return "suspect"
            if chars >= long_chars:
                return "long"
            if segment in rare_set:
                return f"rare:{segment}"
            return f"tier:{tier}"

        scale = self.records / len(reservoir) if reservoir else 0.0
        population: dict[str, float] = {}
        for meta in reservoir:
            name = stratum(*meta)
            population[name] = population.get(name, 0.0) + scale
        pools: dict[str, list[_Item]] = {}
        candidates = [
            *self.suspects.values(),
            *(entry[3] for entry in self.longest),
            *(item for value in rare for item in self.segments[value].values()),
            *(item for heap in self.tiers.values() for item in heap.values()),
        ]
        seen_ids: set[int] = set()
        for item in sorted(candidates, key=lambda i: i.key):
            if id(item) not in seen_ids:
                seen_ids.add(id(item))
                name = stratum(item.chars, item.tier, item.suspect, item.segment)
                pools.setdefault(name, []).append(item)
        chosen = _allocate(pools, options)
        rows = []
        drawn: dict[str, int] = {}
        for name, _item in chosen:
            drawn[name] = drawn.get(name, 0) + 1
        for name, item in chosen:
            weight = max(population.get(name, 0.0), drawn[name]) / drawn[name]
            rows.append(SampleRow(item, name, weight))
        strata = {
            name: (population.get(name, 0.0), drawn.get(name, 0))
            for name in sorted(set(population) | set(drawn))
        }
        return SampleResult(rows, self.records, strata, long_chars, rare)


def _allocate(pools: dict[str, list[_Item]], options: SampleOptions) -> list[tuple[str, _Item]]:
    n = options.n
    tail_groups = [["suspect"], ["long"], sorted(p for p in pools if p.startswith("rare:"))]
    tail_groups = [[p for p in group if p in pools] for group in tail_groups]
    tail_groups = [g for g in tail_groups if g]
    tier_pools = sorted(p for p in pools if p.startswith("tier:"))
    cursor = dict.fromkeys(pools, 0)
    chosen: list[tuple[str, _Item]] = []

    def take_round_robin(names: Sequence[str], quota: int) -> int:
        taken = 0
        while taken < quota:
            progressed = False
            for name in names:
                if taken >= quota:
                    break
                if cursor[name] < len(pools[name]):
                    chosen.append((name, pools[name][cursor[name]]))
                    cursor[name] += 1
                    taken += 1
                    progressed = True
            if not progressed:
                break
        return taken

    tail_quota = round(n * options.tail) if tail_groups else 0
    for index, group in enumerate(tail_groups):
        share = (tail_quota - len(chosen)) // (len(tail_groups) - index)
        take_round_robin(group, share)
    take_round_robin(tier_pools, n - len(chosen))
    take_round_robin(sorted(pools), n - len(chosen))
    return chosen


def sample(
    records: Iterable[Record],
    options: SampleOptions,
    classifier: Classifier | None,
    flagged: Mapping[str, str] | None = None,
) -> SampleResult:
    sampler = Sampler(options, classifier, flagged)
    for record in records:
        sampler.add(record)
    return sampler.select()
