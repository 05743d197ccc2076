"""One streaming pass over a data set for several classifier versions side by side.

Each record's text is classified by every requested version with the pure `classify()`; a
decision log's own decision (`tier`) is scored too, as the predictor `logged`. Memory is
constant in the number of records except for the threshold sweep, which keeps five numbers per
record that no rule but the length rule would send to the target tier.
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from extproc.config.snapshot import Classifier, RuleKind, Snapshot, TextScope
from extproc.core.classify import Decision, classify, select_text
from extproc.tuning.curve import Curve, CurveMetrics, decision_point, joined_curve, score_curve
from extproc.tuning.dataset import ReadStats, Record
from extproc.tuning.evalcurves import CurveCollector, SloCheck, slo_check
from extproc.tuning.metrics import (
    CostModel,
    Metrics,
    Tally,
    baselines,
    metrics_from_tally,
)
from extproc.tuning.quality import DEFAULT_QUALITY, QualityReader, QualitySpec
from extproc.tuning.segments import dominant_script
from extproc.tuning.variants import binary_shape, compile_variant, is_enabled, version_spec

LOGGED = "logged"
OTHER_VALUE = "(other)"
NO_VALUE = "(none)"
#: Distinct values kept per breakdown field; the rest are folded into "(other)".
MAX_VALUES = 12
LENGTH_BUCKETS = ((100, "<100"), (500, "100-500"), (2000, "500-2k"), (10000, "2k-10k"))


@dataclass(frozen=True, slots=True)
class SweepPoint:
    threshold: int | None  # chars > threshold goes to the target tier; None: no length rule
    strong_share: float
    misroute: float | None
    quality: float | None
    cost_per_1k: float | None


@dataclass(frozen=True, slots=True)
class Sweep:
    """A version with its `chars` rule replaced by `chars > t`, for a range of t."""

    version: str
    current: int | None
    points: tuple[SweepPoint, ...]
    operating: SweepPoint


@dataclass(slots=True)
class EvalResult:
    source: str
    config: str
    tiers: tuple[str, ...]
    predictors: list[str]
    overall: dict[str, Metrics]
    baselines: dict[str, Metrics]
    breakdowns: dict[str, list[tuple[str, dict[str, Metrics]]]]
    sweeps: dict[str, Sweep]
    read: ReadStats
    unknown_labels: dict[str, int]
    no_text: int
    notes: list[str]
    weighted: bool
    seconds: float = 0.0
    #: cost-quality curves: every version (a point), its family and score sweep, the baselines
    curves: list[CurveMetrics] = field(default_factory=list)
    curve_lines: list[Curve] = field(default_factory=list)
    slo: SloCheck | None = None
    quality_fields: str = "evidence.<tier>_correct"
    graded: bool = False


class _SweepData:
    """Sums for the sweep: base (all to default), records always sent to target, the rest."""

    def __init__(
        self, version: str, other: Classifier, target: str, default: str, current: int | None
    ) -> None:
        self.version = version
        self.other = other
        self.target = target
        self.default = default
        self.current = current
        self.total = self.labelled = self.quality_records = 0.0
        self.base = [0.0, 0.0, 0.0]  # misroute, cost, quality with every record on `default`
        self.fixed = [0.0, 0.0, 0.0, 0.0]  # weight, delta misroute, cost, quality (other rules)
        self.chars: array[int] = array("q")
        self.rest: list[array[float]] = [array("d") for _ in range(4)]
        # the family curve, over the records with quality: (score, weight, gain of target)
        self.family: list[tuple[float, float, float]] = []
        #: the compiled name of the version's length rule ("" when unknown)
        self.length_rule = ""

    def add(
        self,
        record: Record,
        weight: float,
        label: str | None,
        costs: dict[str, float],
        correct: dict[str, float] | None,
        full: Decision | None = None,
    ) -> None:
        """One record; `full` is the version's own decision on it, when known: unless its
        length rule decided, removing that rule changes nothing, and no second classify()."""
        assert record.chat is not None
        if full is not None and self.length_rule and full.rule != self.length_rule:
            decision = full
        else:
            decision = classify(record.chat, self.other)
        self.total += weight
        d_mis = 0.0
        if label is not None:
            self.labelled += weight
            miss_default = label != self.default
            self.base[0] += weight * miss_default
            d_mis = weight * ((label != self.target) - miss_default)
        self.base[1] += weight * costs.get(self.default, 0.0)
        d_cost = weight * (costs.get(self.target, 0.0) - costs.get(self.default, 0.0))
        d_q = 0.0
        if correct is not None:
            self.quality_records += weight
            self.base[2] += weight * correct[self.default]
            d_q = weight * (correct[self.target] - correct[self.default])
        values = (weight, d_mis, d_cost, d_q)
        if correct is not None and weight > 0:
            up = decision.tier == self.target
            self.family.append((math.inf if up else decision.chars, weight, d_q / weight))
        if decision.tier == self.target:
            for index, value in enumerate(values):
                self.fixed[index] += value
        else:
            self.chars.append(decision.chars)
            for column, value in zip(self.rest, values, strict=True):
                column.append(value)

    def sweep(self, priced: bool, steps: int = 25) -> Sweep:
        order = sorted(range(len(self.chars)), key=lambda i: -self.chars[i])
        descending = [self.chars[i] for i in order]
        ascending = descending[::-1]
        prefix = [[0.0] for _ in range(4)]
        for i in order:
            for column, sums in zip(self.rest, prefix, strict=True):
                sums.append(sums[-1] + column[i])
        thresholds: set[int | None] = {None, self.current}
        if ascending:
            for step in range(steps + 1):
                q = ascending[min(len(ascending) - 1, step * len(ascending) // steps)]
                thresholds.add(max(0, q - 1))
        points = {t: self._point(t, ascending, prefix, priced) for t in thresholds}
        ordered = sorted(points.values(), key=lambda p: p.strong_share)
        return Sweep(self.version, self.current, tuple(ordered), points[self.current])

    def _point(
        self, threshold: int | None, ascending: list[int], prefix: list[list[float]], priced: bool
    ) -> SweepPoint:
        k = 0 if threshold is None else len(ascending) - bisect.bisect_right(ascending, threshold)
        weight, d_mis, d_cost, d_q = (self.fixed[i] + prefix[i][k] for i in range(4))
        return SweepPoint(
            threshold=threshold,
            strong_share=weight / self.total if self.total else 0.0,
            misroute=(self.base[0] + d_mis) / self.labelled if self.labelled else None,
            quality=(self.base[2] + d_q) / self.quality_records if self.quality_records else None,
            cost_per_1k=(self.base[1] + d_cost) / self.total * 1000
            if priced and self.total
            else None,
        )

    def family_curve(self, tiers: tuple[str, ...]) -> Curve | None:
        """The version with its length rule swept, as PGR against strong share."""
        if self.target != tiers[-1] or self.default != tiers[0] or not self.family:
            return None
        scores = [score for score, _w, _g in self.family]
        weights = [w for _s, w, _g in self.family]
        gains = [g for _s, _w, g in self.family]
        current = math.inf if self.current is None else self.current
        ups = [math.isinf(score) or score > current for score in scores]
        name = f"{self.version} family"
        point = decision_point(ups, [0.0] * len(gains), gains, weights)
        curve = score_curve(scores, [0.0] * len(gains), gains, weights, name)
        if curve is None or point is None:
            return None
        points = [p for p in curve.points if p.share > 0 or not math.isinf(max(scores))]
        return joined_curve(name, points, point.operating)


def _sweep_for(snapshot: Snapshot, version: str) -> _SweepData | None:
    classifier = snapshot.classifiers[version]
    shape = binary_shape(classifier, snapshot.tier_names)
    if shape is None:
        return None
    target, default = shape
    spec = version_spec(snapshot, version)
    rules = list(spec.get("rules", []))
    lengths = [r for r in rules if r["kind"] == RuleKind.CHARS.value and is_enabled(r)]
    if any("lt" in r for r in lengths) or len(lengths) > 1:
        return None
    current = int(lengths[0]["gt"]) if lengths else None
    spec["rules"] = [r for r in rules if all(r is not x for x in lengths)]
    other = compile_variant(snapshot, version, spec)
    data = _SweepData(version, other, target, default, current)
    chars = [r for r in classifier.rules if r.kind is RuleKind.CHARS]
    if len(chars) == 1 and len(lengths) == 1:
        data.length_rule = chars[0].name
    elif not lengths and not chars:
        data.length_rule = "\x00"  # no length rule: the version's decisions are the sweep's
    return data


class Evaluator:
    """Accumulates the figures of several versions over records fed one at a time."""

    def __init__(
        self,
        snapshot: Snapshot,
        versions: Sequence[str],
        cost_model: CostModel,
        *,
        by: Sequence[str] = (),
        weight_field: str | None = None,
        sweep: bool = True,
        config_label: str = "",
        quality: QualitySpec = DEFAULT_QUALITY,
        max_misroute: float | None = None,
        weak_share: tuple[float, float] | None = None,
        curves: bool = True,
    ) -> None:
        self.snapshot = snapshot
        self.config_label = config_label or snapshot.source
        self.tiers = snapshot.tier_names
        self.versions = list(versions)
        self.classifiers = [snapshot.classifiers[v] for v in self.versions]
        self.cost_model = cost_model
        self.by = list(by)
        self.weight_field = weight_field
        self.tallies: dict[str, Tally] = {}
        self.segments: dict[str, dict[str, dict[str, Tally]]] = {f: {} for f in self.by}
        self.sweeps = [s for v in self.versions if sweep and (s := _sweep_for(snapshot, v))]
        self.unknown_labels: dict[str, int] = {}
        self.no_text = 0
        self.estimated_in = self.assumed_out = False
        self.quality = QualityReader(self.tiers, quality)
        self.slo = (max_misroute, weak_share)
        self.collector = CurveCollector(self.tiers, self.versions) if curves else None

    def add(self, record: Record) -> None:
        if record.get("kind") in ("feedback", "gate"):
            return  # a decision log's feedback or gate line: its request has its own record
        label = record.label
        if label is not None and label not in self.tiers:
            self.unknown_labels[label] = self.unknown_labels.get(label, 0) + 1
            label = None
        weight = 1.0
        if self.weight_field:
            weight = record.number(self.weight_field) or 1.0
        costs, estimated_in, assumed_out = self.cost_model.noted_costs(record)
        self.estimated_in |= estimated_in
        self.assumed_out |= assumed_out
        correct = self.quality(record)
        decided: list[tuple[str, str]] = []
        logged = record.logged_tier
        if logged in self.tiers:
            decided.append((LOGGED, logged))
        if record.chat is None:
            self.no_text += 1
        else:
            scores: list[float | None] = []
            full: dict[str, Decision] = {}
            for version, classifier in zip(self.versions, self.classifiers, strict=True):
                decision = full[version] = classify(record.chat, classifier)
                decided.append((version, decision.tier))
                scores.append(getattr(decision, "score", None))
            for data in self.sweeps:
                data.add(record, weight, label, costs, correct, full.get(data.version))
            if self.collector is not None and correct is not None:
                tiers = [tier for name, tier in decided if name != LOGGED]
                self.collector.add(weight, correct, tiers, scores)
        segments = [(f, self._segment(record, f)) for f in self.by] if decided else []
        for name, tier in decided:
            self._tally(self.tallies, name).add(tier, label, weight, costs, correct)
            for field_name, value in segments:
                by_value = self.segments[field_name].setdefault(value, {})
                self._tally(by_value, name).add(tier, label, weight, costs, correct)

    def _tally(self, tallies: dict[str, Tally], name: str) -> Tally:
        found = tallies.get(name)
        if found is None:
            found = tallies[name] = Tally(self.tiers)
        return found

    def _segment(self, record: Record, name: str) -> str:
        value = record.get(name)
        if value is None and record.chat is not None and name in ("lang", "length"):
            text = select_text(record.chat.messages, TextScope.ALL)
            if name == "lang":
                return dominant_script(text)
            return next((label for limit, label in LENGTH_BUCKETS if len(text) < limit), ">10k")
        if value is None or value == "":
            return NO_VALUE
        return str(value).lower() if isinstance(value, bool) else str(value)

    def result(self, source: str, read: ReadStats, started: float | None = None) -> EvalResult:
        priced = self.cost_model.priced
        names = [n for n in (LOGGED, *self.versions) if n in self.tallies]
        overall = {n: metrics_from_tally(n, self.tallies[n], priced) for n in names}
        base = {}
        if names:
            first = self.tallies[self.versions[0] if self.versions[0] in self.tallies else names[0]]
            base = baselines(first, priced, overall)
        breakdowns = {f: self._breakdown(f, names, priced) for f in self.by}
        notes = self.cost_model.notes(self.estimated_in, self.assumed_out)
        if self.weight_field:
            notes.append(f"records weighted by their '{self.weight_field}' field")
        sweeps = [s for s in self.sweeps if s.total]
        curves: list[CurveMetrics] = []
        lines: list[Curve] = []
        if self.collector is not None:
            families = [f for s in sweeps if (f := s.family_curve(self.tiers)) is not None]
            curves, lines = self.collector.result(families)
        slo = None
        if names and (self.slo[0] is not None or self.slo[1] is not None):
            slo = slo_check(self.tiers, overall, *self.slo)
        return EvalResult(
            source=source,
            config=self.config_label,
            tiers=self.tiers,
            predictors=names,
            overall=overall,
            baselines=base,
            breakdowns=breakdowns,
            sweeps={s.version: s.sweep(priced) for s in sweeps},
            read=read,
            unknown_labels=dict(self.unknown_labels),
            no_text=self.no_text,
            notes=notes,
            weighted=bool(self.weight_field),
            seconds=time.perf_counter() - started if started is not None else 0.0,
            curves=curves,
            curve_lines=lines,
            slo=slo,
            quality_fields=self.quality.spec.describe(),
            graded=self.quality.graded,
        )

    def _breakdown(
        self, name: str, predictors: list[str], priced: bool
    ) -> list[tuple[str, dict[str, Metrics]]]:
        values = self.segments[name]
        size = {v: max(t.records for t in tallies.values()) for v, tallies in values.items()}
        ranked = sorted(values, key=lambda v: (-size[v], v))
        kept, folded = ranked[:MAX_VALUES], ranked[MAX_VALUES:]
        groups: list[tuple[str, dict[str, Tally]]] = [(v, values[v]) for v in kept]
        if folded:
            merged: dict[str, Tally] = {}
            for value in folded:
                for predictor, tally in values[value].items():
                    self._tally(merged, predictor).merge(tally)
            groups.append((f"{OTHER_VALUE} x{len(folded)}", merged))
        return [
            (
                value,
                {p: metrics_from_tally(p, tallies[p], priced) for p in predictors if p in tallies},
            )
            for value, tallies in groups
        ]


def evaluate(
    records: Iterable[Record],
    evaluator: Evaluator,
    source: str,
    read: ReadStats,
) -> EvalResult:
    started = time.perf_counter()
    for record in records:
        evaluator.add(record)
    return evaluator.result(source, read, started)
