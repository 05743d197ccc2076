"""Validation splits for `tune` and `candidates`, grouped by a key, and held-out fold figures.

A record's place in a split is `blake2b(seed, key)` (`sample.record_key`), so a split does not
depend on file order. The key is the record's id, or with `group_by` the value of that field
(`conversation_id`, `user`, any dotted path): every record of a group lands in the same fold, so a
conversation's turns or a user's requests are never both fitted on and scored. A record without
the field is its own group.

Fold figures are computed with `classify()` on the held-out records, against their labels (any
tier: a record labelled with a third tier is misrouted by both tiers of a two-tier version) and,
where records carry per-tier quality, as PGR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from extproc.config.snapshot import Classifier
from extproc.core.classify import classify
from extproc.tuning.dataset import Record
from extproc.tuning.sample import record_key


def group_key(record: Record, group_by: str | None) -> str:
    if group_by:
        value = record.get(group_by)
        if value is not None and value != "":
            return f"{group_by}\x00{value}"
    return record.id


def fold_masks(records: Sequence[Record], folds: int, seed: int, group_by: str | None) -> list[int]:
    """K bit sets of record indices, each group of records in one of them."""
    masks = [0] * folds
    for index, record in enumerate(records):
        fold = min(folds - 1, int(record_key(seed, group_key(record, group_by)) * folds))
        masks[fold] |= 1 << index
    return masks


def splits(
    records: Sequence[Record], holdout: float, folds: int, seed: int, group_by: str | None = None
) -> tuple[str, int, int, list[int]]:
    """(mode, training mask, held-out mask, fold masks) for hold-out, K folds or in-sample."""
    everything = (1 << len(records)) - 1
    if folds >= 2:
        return "cv", everything, everything, fold_masks(records, folds, seed, group_by)
    if holdout <= 0:
        return "in-sample", everything, everything, []
    test = 0
    for index, record in enumerate(records):
        if record_key(seed, group_key(record, group_by)) < holdout:
            test |= 1 << index
    return "holdout", everything & ~test, test, []


@dataclass(frozen=True, slots=True)
class FoldFigures:
    fold: int
    records: int
    before_misroute: float
    after_misroute: float
    before_weak: float
    after_weak: float
    feasible: bool
    #: always-weak's misroute on the fold (the share of labels above the cheapest tier)
    weak_misroute: float = 0.0
    #: share of the fold on the top tier after tuning
    after_strong: float = 0.0
    #: sums over the fold's records with quality: count, all-weak, all-strong, before, after
    quality_records: int = 0
    quality_weak: float = 0.0
    quality_strong: float = 0.0
    quality_before: float = 0.0
    quality_after: float = 0.0

    @property
    def after_pgr(self) -> float | None:
        return _pgr(self.quality_after, self.quality_weak, self.quality_strong)

    @property
    def before_pgr(self) -> float | None:
        return _pgr(self.quality_before, self.quality_weak, self.quality_strong)


def _pgr(value: float, weak: float, strong: float) -> float | None:
    return (value - weak) / (strong - weak) if strong - weak > 1e-12 else None


def fold_figures(
    index: int,
    held: int,
    records: Sequence[Record],
    qualities: Sequence[Mapping[str, float] | None],
    tiers: tuple[str, ...],
    base: Classifier,
    tuned: Classifier,
    feasible: bool,
) -> FoldFigures:
    weak, top = tiers[0], tiers[-1]
    n = before_miss = after_miss = before_weak = after_weak = weak_miss = after_top = 0
    q_n = 0
    q = [0.0, 0.0, 0.0, 0.0]  # all-weak, all-strong, before, after
    for i, record in enumerate(records):
        if not held >> i & 1:
            continue
        assert record.chat is not None
        n += 1
        before = classify(record.chat, base).tier
        after = classify(record.chat, tuned).tier
        before_miss += before != record.label
        after_miss += after != record.label
        weak_miss += record.label != weak
        before_weak += before == weak
        after_weak += after == weak
        after_top += after == top
        quality = qualities[i]
        if quality is not None:
            q_n += 1
            for slot, tier in enumerate((weak, top, before, after)):
                q[slot] += quality[tier]
    size = max(n, 1)
    return FoldFigures(
        fold=index + 1,
        records=n,
        before_misroute=before_miss / size,
        after_misroute=after_miss / size,
        before_weak=before_weak / size,
        after_weak=after_weak / size,
        feasible=feasible,
        weak_misroute=weak_miss / size,
        after_strong=after_top / size,
        quality_records=q_n,
        quality_weak=q[0],
        quality_strong=q[1],
        quality_before=q[2],
        quality_after=q[3],
    )


@dataclass(frozen=True, slots=True)
class Pooled:
    """Out-of-fold figures of the tuned version: every record scored by the fold not fitted on
    it (cross-validation) or by the held-out split."""

    where: str
    records: int
    misroute: float
    weak_misroute: float
    before_misroute: float
    strong_share: float
    pgr: float | None
    before_pgr: float | None
    #: the oracle's best PGR with at most the same strong share, on the same records
    oracle_pgr: float | None = None

    @property
    def random_pgr(self) -> float:
        """Random routing at the same strong share (its expected PGR is the share)."""
        return self.strong_share


def pooled(folds: Sequence[FoldFigures], where: str) -> Pooled | None:
    total = sum(f.records for f in folds)
    if not total:
        return None

    def mean(get: str) -> float:
        return sum(float(getattr(f, get)) * f.records for f in folds) / total

    sums = [sum(getattr(f, k) for f in folds) for k in ("quality_weak", "quality_strong")]
    after = sum(f.quality_after for f in folds)
    before = sum(f.quality_before for f in folds)
    return Pooled(
        where=where,
        records=total,
        misroute=mean("after_misroute"),
        weak_misroute=mean("weak_misroute"),
        before_misroute=mean("before_misroute"),
        strong_share=mean("after_strong"),
        pgr=_pgr(after, *sums),
        before_pgr=_pgr(before, *sums),
    )
