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

Cost of a request on a tier: `input_per_mtok * tokens_in / 1e6 + output_per_mtok * tokens_out
/ 1e6 + per_hour / 3600 * tokens_out / tokens_per_second`. Token counts come from the record
(`tokens_in`/`tokens_out`, or `usage.prompt_tokens`/`usage.completion_tokens`) when present, else
`tokens_in` is estimated from the text (`estimate_tokens`) and `tokens_out` is an assumed
`output_tokens` (default 256). A record's logged tokens are reused for every tier (an
approximation: another model would answer at another length). `per_hour` prices (reserved
capacity) need a throughput: `tokens_per_second` output tokens per second at full use (default
1,000); both assumptions are printed with every cost figure that depends on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from extproc.config.snapshot import Price
from extproc.tuning.dataset import Record

DEFAULT_OUTPUT_TOKENS = 256
DEFAULT_TOKENS_PER_SECOND = 1000.0


def estimate_tokens(texts: Iterable[str]) -> int:
    """Input tokens of some texts: 4 ASCII characters per token, 1 token per other character.

    Close to what current BPE tokenizers give for English prose and code (~4 characters per
    token) and for Korean, Chinese and Japanese (~1 token per character), and never zero.
    """
    ascii_chars = other = 0
    for text in texts:
        size = len(text)
        if text.isascii():
            ascii_chars += size
        else:
            wide = sum(1 for ch in text if ord(ch) > 127)
            other += wide
            ascii_chars += size - wide
    return max(1, math.ceil(ascii_chars / 4) + other)


@dataclass(frozen=True, slots=True)
class CostModel:
    """Tier prices plus the two assumptions needed when records lack token counts."""

    prices: Mapping[str, Price]
    output_tokens: float = DEFAULT_OUTPUT_TOKENS
    tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND

    @property
    def priced(self) -> bool:
        return any(
            p.input_per_mtok or p.output_per_mtok or p.per_hour for p in self.prices.values()
        )

    @property
    def per_hour(self) -> bool:
        return any(p.per_hour for p in self.prices.values())

    def costs(self, record: Record) -> dict[str, float]:
        """The cost of this request on every tier."""
        tokens_in = record.tokens_in
        if tokens_in is None:
            if record.chat is not None:
                tokens_in = estimate_tokens(text for _role, text in record.chat.messages)
            else:
                tokens_in = math.ceil((record.number("chars") or 0) / 4)
        tokens_out = record.tokens_out
        if tokens_out is None:
            tokens_out = self.output_tokens
        return {
            tier: price.input_per_mtok * tokens_in / 1e6
            + price.output_per_mtok * tokens_out / 1e6
            + price.per_hour / 3600 * tokens_out / self.tokens_per_second
            for tier, price in self.prices.items()
        }

    def notes(self, estimated_in: bool, assumed_out: bool) -> list[str]:
        """The assumptions behind the cost figures, for reports."""
        if not self.priced:
            return ["no tier has a price in the config: costs are not computed"]
        notes = []
        if estimated_in:
            notes.append(
                "input tokens estimated from text (4 ASCII characters or 1 other character "
                "per token) where records carry no token counts"
            )
        if assumed_out:
            notes.append(
                f"output tokens assumed {self.output_tokens:g} per request where records "
                "carry none (--output-tokens)"
            )
        if self.per_hour:
            notes.append(
                f"per_hour prices assume {self.tokens_per_second:g} output tokens/s per tier "
                "at full use (--tokens-per-second)"
            )
        return notes


def correctness(record: Record, tiers: tuple[str, ...]) -> dict[str, bool] | None:
    """Per-tier correctness from `evidence`, or None unless every tier has a value."""
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

    def add(
        self,
        tier: str,
        label: str | None,
        weight: float,
        costs: Mapping[str, float],
        correct: Mapping[str, bool] | None,
    ) -> None:
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
        if correct is not None:
            self.quality_records += weight
            self.quality += weight * correct[tier]
            for name, ok in correct.items():
                self.quality_all[name] = self.quality_all.get(name, 0.0) + weight * ok

    def merge(self, other: Tally) -> None:
        self.records += other.records
        self.count += other.count
        self.cost += other.cost
        self.labelled += other.labelled
        self.quality_records += other.quality_records
        self.quality += other.quality
        for mine, theirs in (
            (self.decided, other.decided),
            (self.labels, other.labels),
            (self.cost_all, other.cost_all),
            (self.quality_all, other.quality_all),
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
    return found


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
