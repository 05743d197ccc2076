"""Routing metrics: weighted confusion tallies, cost per 1k requests, quality, PGR, baselines.

Conventions (as in `../shared/data/README.md`, generalised to any number of tiers):

- Labels are tier names. "strong" is the top (most expensive) tier and the positive class of
  precision, recall and F1; "weak" is the cheapest tier.
- Misroute rate = records whose decision differs from the label / labelled records. Under-routed
  (a false negative when there are two tiers) = decided a cheaper tier than the label; over-routed
  (a false positive) = decided a more expensive one.
- Weak share = share of decisions for the cheapest tier, over every record decided (labelled or
  not).
- Quality, when records carry per-model results (`evidence.strong_correct` and
  `evidence.weak_correct`, or `evidence.<tier>_correct`): the mean correctness of the model each
  record was routed to. Quality retained = quality / all-strong quality; PGR (performance gap
  recovered) = (quality - all-weak quality) / (all-strong quality - all-weak quality).
- Baselines: "always <tier>", and "random@<version>", a router that picks tiers at random with the
  version's tier shares (its expected figures; its PGR equals its strong share).

Costs: `costs.CostModel` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from extproc.tuning.costs import (
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_TOKENS_PER_SECOND,
    CostModel,
    estimate_tokens,
)
from extproc.tuning.dataset import Record

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_TOKENS_PER_SECOND",
    "ORACLE",
    "CostModel",
    "Metrics",
    "Tally",
    "TierFigures",
    "baselines",
    "correctness",
    "estimate_tokens",
    "expected_metrics",
    "metrics_from_tally",
    "misroute_floor",
    "oracle_metrics",
]


def correctness(record: Record, tiers: tuple[str, ...]) -> dict[str, bool] | None:
    """Per-tier correctness from boolean `evidence`, or None unless every tier has a value.

    Graded scores, and other field names, are read by `quality.QualityReader`.
    """
    result: dict[str, bool] = {}
    for rank, tier in enumerate(tiers):
        names = [f"evidence.{tier}_correct"]
        if rank == len(tiers) - 1:
            names.append("evidence.strong_correct")
        if rank == 0:
            names.append("evidence.weak_correct")
        for name in names:
            value = record.get(name)
            if isinstance(value, bool):
                result[tier] = value
                break
        else:
            return None
    return result


@dataclass(slots=True)
class Tally:
    """Weighted sums over the records one predictor decided."""

    tiers: tuple[str, ...]
    records: float = 0.0
    count: int = 0
    decided: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    labelled: float = 0.0
    labels: dict[str, float] = field(default_factory=dict)
    confusion: dict[tuple[str, str], float] = field(default_factory=dict)
    quality_records: float = 0.0
    quality: float = 0.0
    # per tier, over the same records: what routing everything to that tier would give
    cost_all: dict[str, float] = field(default_factory=dict)
    quality_all: dict[str, float] = field(default_factory=dict)
    # weight of the records with quality, per decided tier
    quality_decided: dict[str, float] = field(default_factory=dict)
    # the oracle (every labelled record on its label's tier): cost, and quality where known
    oracle_cost: float = 0.0
    oracle_quality: float = 0.0
    oracle_quality_records: float = 0.0

    def add(
        self,
        tier: str,
        label: str | None,
        weight: float,
        costs: Mapping[str, float],
        correct: Mapping[str, float] | None,
    ) -> None:
        """One decided record; `correct` is each tier's quality on it (booleans count 1/0)."""
        self.records += weight
        self.count += 1
        self.decided[tier] = self.decided.get(tier, 0.0) + weight
        self.cost += weight * costs.get(tier, 0.0)
        for name, value in costs.items():
            self.cost_all[name] = self.cost_all.get(name, 0.0) + weight * value
        if label is not None:
            self.labelled += weight
            self.labels[label] = self.labels.get(label, 0.0) + weight
            key = (label, tier)
            self.confusion[key] = self.confusion.get(key, 0.0) + weight
            self.oracle_cost += weight * costs.get(label, 0.0)
        if correct is not None:
            self.quality_records += weight
            self.quality += weight * correct[tier]
            self.quality_decided[tier] = self.quality_decided.get(tier, 0.0) + weight
            for name, ok in correct.items():
                self.quality_all[name] = self.quality_all.get(name, 0.0) + weight * ok
            if label is not None:
                self.oracle_quality_records += weight
                self.oracle_quality += weight * correct[label]

    def merge(self, other: Tally) -> None:
        self.records += other.records
        self.count += other.count
        self.cost += other.cost
        self.labelled += other.labelled
        self.quality_records += other.quality_records
        self.quality += other.quality
        self.oracle_cost += other.oracle_cost
        self.oracle_quality += other.oracle_quality
        self.oracle_quality_records += other.oracle_quality_records
        for mine, theirs in (
            (self.decided, other.decided),
            (self.labels, other.labels),
            (self.cost_all, other.cost_all),
            (self.quality_all, other.quality_all),
            (self.quality_decided, other.quality_decided),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0.0) + value
        for pair, value in other.confusion.items():
            self.confusion[pair] = self.confusion.get(pair, 0.0) + value


@dataclass(frozen=True, slots=True)
class Metrics:
    """The figures of one predictor (a classifier version or a baseline) on one record set."""

    name: str
    tiers: tuple[str, ...]
    records: float
    labelled: float
    confusion: dict[str, dict[str, float]]  # label -> decided tier -> weight
    shares: dict[str, float]  # decided tier -> share of records
    tp: float
    fp: float
    fn: float
    tn: float
    under: float
    over: float
    misroute: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    cost_per_1k: float | None
    quality: float | None
    quality_retained: float | None
    pgr: float | None

    @property
    def weak_share(self) -> float | None:
        return self.shares.get(self.tiers[0]) if self.records else None

    @property
    def strong_share(self) -> float | None:
        return self.shares.get(self.tiers[-1]) if self.records else None

    def per_tier(self) -> dict[str, TierFigures]:
        """For each label tier: its records, and the shares of them routed right, lower, higher."""
        found = {}
        for rank, label in enumerate(self.tiers):
            row = self.confusion.get(label, {})
            total = sum(row.values())
            under = sum(v for t, v in row.items() if self.tiers.index(t) < rank)
            over = sum(v for t, v in row.items() if self.tiers.index(t) > rank)
            found[label] = TierFigures(
                label,
                total,
                _ratio(under + over, total),
                _ratio(under, total),
                _ratio(over, total),
            )
        return found

    def loses_to(self, baseline: Metrics) -> bool:
        """Misroutes more than the baseline (e.g. always-weak) on the same records."""
        return (
            self.misroute is not None
            and baseline.misroute is not None
            and self.misroute > baseline.misroute + 1e-12
        )


@dataclass(frozen=True, slots=True)
class TierFigures:
    """Misroutes of the records labelled with one tier (the cheapest sufficient one)."""

    tier: str
    labelled: float
    misroute: float | None
    under: float | None  # sent to a cheaper tier than the label
    over: float | None  # sent to a more expensive tier than the label


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def metrics_from_tally(name: str, tally: Tally, priced: bool) -> Metrics:
    shares = {
        t: tally.decided.get(t, 0.0) / tally.records if tally.records else 0.0 for t in tally.tiers
    }
    cost = tally.cost / tally.records * 1000 if priced and tally.records else None
    quality = _ratio(tally.quality, tally.quality_records)
    return _build(
        name, tally, confusion=dict(tally.confusion), shares=shares, cost=cost, quality=quality
    )


def expected_metrics(name: str, tally: Tally, shares: Mapping[str, float], priced: bool) -> Metrics:
    """A router that picks tier t with probability `shares[t]`, whatever the request."""
    confusion = {
        (label, tier): count * share
        for label, count in tally.labels.items()
        for tier, share in shares.items()
    }
    full = {t: shares.get(t, 0.0) for t in tally.tiers}
    cost = None
    if priced and tally.records:
        cost = sum(share * tally.cost_all.get(t, 0.0) for t, share in full.items())
        cost = cost / tally.records * 1000
    quality = None
    if tally.quality_records:
        total = sum(share * tally.quality_all.get(t, 0.0) for t, share in full.items())
        quality = total / tally.quality_records
    return _build(name, tally, confusion=confusion, shares=full, cost=cost, quality=quality)


def baselines(tally: Tally, priced: bool, versions: Mapping[str, Metrics]) -> dict[str, Metrics]:
    """Always-weak, always-strong, and random at each version's tier shares."""
    weak, strong = tally.tiers[0], tally.tiers[-1]
    found = {
        f"always-{weak}": expected_metrics(f"always-{weak}", tally, {weak: 1.0}, priced),
        f"always-{strong}": expected_metrics(f"always-{strong}", tally, {strong: 1.0}, priced),
    }
    for version, metrics in versions.items():
        name = f"random@{version}"
        found[name] = expected_metrics(name, tally, metrics.shares, priced)
    if tally.labelled:
        found[ORACLE] = oracle_metrics(tally, priced)
    return found


ORACLE = "oracle"


def oracle_metrics(tally: Tally, priced: bool) -> Metrics:
    """Every labelled record on its label's tier: no misroute, the labels' quality and cost."""
    confusion = {(label, label): count for label, count in tally.labels.items()}
    shares = {t: tally.labels.get(t, 0.0) / tally.labelled for t in tally.tiers}
    cost = tally.oracle_cost / tally.labelled * 1000 if priced else None
    quality = _ratio(tally.oracle_quality, tally.oracle_quality_records)
    return _build(ORACLE, tally, confusion=confusion, shares=shares, cost=cost, quality=quality)


def misroute_floor(
    labels: Mapping[str, float], tiers: tuple[str, ...], weak_share: tuple[float, float]
) -> float | None:
    """The oracle's best misroute when the cheapest tier's share must lie in `weak_share`.

    Within the band the oracle routes every record to its label, except that it must move the
    records by which the label's own weak share falls outside the band: each moved record is a
    misroute, so the floor is the distance from the weak label share to the band.
    """
    total = sum(labels.values())
    if not total:
        return None
    weak = labels.get(tiers[0], 0.0) / total
    low, high = weak_share
    return max(0.0, low - weak, weak - high)


def _build(
    name: str,
    tally: Tally,
    *,
    confusion: Mapping[tuple[str, str], float],
    shares: dict[str, float],
    cost: float | None,
    quality: float | None,
) -> Metrics:
    tiers = tally.tiers
    rank = {t: i for i, t in enumerate(tiers)}
    top = tiers[-1]
    tp = fp = fn = tn = under = over = 0.0
    table: dict[str, dict[str, float]] = {t: dict.fromkeys(tiers, 0.0) for t in tiers}
    for (label, tier), count in confusion.items():
        table[label][tier] += count
        if rank[tier] < rank[label]:
            under += count
        elif rank[tier] > rank[label]:
            over += count
        if label == top:
            tp, fn = (tp + count, fn) if tier == top else (tp, fn + count)
        else:
            fp, tn = (fp + count, tn) if tier == top else (fp, tn + count)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None:
        f1 = _ratio(2 * precision * recall, precision + recall) or 0.0
    retained = pgr = None
    if quality is not None and tally.quality_records:
        q_weak = tally.quality_all.get(tiers[0], 0.0) / tally.quality_records
        q_strong = tally.quality_all.get(top, 0.0) / tally.quality_records
        retained = _ratio(quality, q_strong)
        pgr = _ratio(quality - q_weak, q_strong - q_weak)
    return Metrics(
        name=name,
        tiers=tiers,
        records=tally.records,
        labelled=tally.labelled,
        confusion=table,
        shares=shares,
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        under=under,
        over=over,
        misroute=_ratio(under + over, tally.labelled),
        precision=precision,
        recall=recall,
        f1=f1,
        cost_per_1k=cost,
        quality=quality,
        quality_retained=retained,
        pgr=pgr,
    )
