"""The evaluation's cost-quality curves and SLO check, gathered during `evaluate`'s one pass.

For every record with text and per-tier quality, the collector keeps its weight, the quality of
the cheapest and the top tier, the quality of the tier each version routed it to, and each
version's score when its decisions carry one (a learned scorer). From those (`curve`):

- each version as a point (its strong share and PGR), and as a curve when it has a score;
- each version's family (its length rule swept, built by `evaluate`'s sweep);
- always-weak (0, 0), always-strong (1, 1), random (the diagonal) and the oracle's bound.

With more than two tiers, "strong" is the top tier and "weak" the cheapest: PGR is measured
between them, a version's point uses the quality of the tier it actually chose, and its share is
its top-tier share.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from extproc.tuning.curve import (
    Curve,
    CurveMetrics,
    CurvePoint,
    oracle_curve,
    random_curve,
    score_curve,
    summarize,
)
from extproc.tuning.metrics import Metrics, misroute_floor


class CurveCollector:
    def __init__(self, tiers: Sequence[str], versions: Sequence[str]) -> None:
        self.tiers = tuple(tiers)
        self.versions = list(versions)
        self.weights = array("d")
        self.weak = array("d")
        self.strong = array("d")
        self.routed = [array("d") for _ in self.versions]
        self.up = [array("d") for _ in self.versions]  # weight on the top tier
        self.scores: list[array[float] | None] = [array("d") for _ in self.versions]

    def add(
        self,
        weight: float,
        quality: Mapping[str, float],
        decided: Sequence[str],
        scores: Sequence[float | None],
    ) -> None:
        top = self.tiers[-1]
        self.weights.append(weight)
        self.weak.append(quality[self.tiers[0]])
        self.strong.append(quality[top])
        for index, (tier, score) in enumerate(zip(decided, scores, strict=True)):
            self.routed[index].append(quality[tier])
            self.up[index].append(weight if tier == top else 0.0)
            column = self.scores[index]
            if column is not None:
                if score is None:
                    self.scores[index] = None
                else:
                    column.append(float(score))

    def result(self, families: Sequence[Curve] = ()) -> tuple[list[CurveMetrics], list[Curve]]:
        """Every curve's figures (versions first, then baselines) and the lines to plot."""
        weights, weak, strong = list(self.weights), list(self.weak), list(self.strong)
        oracle = oracle_curve(weak, strong, weights)
        if oracle is None:
            return [], []  # no gap between the weak and the strong model: PGR is undefined
        total_w = sum(weights)
        q_weak = sum(w * q for w, q in zip(weights, weak, strict=True))
        gap = sum(w * q for w, q in zip(weights, strong, strict=True)) - q_weak
        lines: list[Curve] = []
        for index, version in enumerate(self.versions):
            routed = sum(w * q for w, q in zip(weights, self.routed[index], strict=True))
            point = CurvePoint(sum(self.up[index]) / total_w, (routed - q_weak) / gap)
            column = self.scores[index]
            if column is not None and len(column) == len(weights):
                curve = score_curve(list(column), weak, strong, weights, version, point)
                if curve is not None:
                    lines.append(curve)
                    continue
            lines.append(Curve(version, "point", (point,), point))
        lines += families
        weak_name, strong_name = f"always-{self.tiers[0]}", f"always-{self.tiers[-1]}"
        lines += [
            Curve(weak_name, "point", (CurvePoint(0.0, 0.0),)),
            Curve(strong_name, "point", (CurvePoint(1.0, 1.0),)),
            random_curve(),
            oracle,
        ]
        return [summarize(c, oracle) for c in lines], lines


@dataclass(frozen=True, slots=True)
class SloCheck:
    """A requested SLO against the oracle's floor and each version."""

    max_misroute: float | None
    weak_share: tuple[float, float] | None
    #: the oracle's best misroute with its weak share in the band (0 without a band)
    floor: float
    #: whether even the oracle can meet the SLO
    reachable: bool
    met: dict[str, bool] = field(default_factory=dict)


def slo_check(
    tiers: tuple[str, ...],
    overall: Mapping[str, Metrics],
    max_misroute: float | None,
    weak_share: tuple[float, float] | None,
) -> SloCheck:
    first = next(iter(overall.values()))
    labels = {t: sum(first.confusion[t].values()) for t in tiers}
    floor = 0.0
    if weak_share is not None:
        floor = misroute_floor(labels, tiers, weak_share) or 0.0
    reachable = max_misroute is None or floor <= max_misroute + 1e-12
    met = {name: slo_met(m, max_misroute, weak_share) for name, m in overall.items()}
    return SloCheck(max_misroute, weak_share, floor, reachable, met)


def slo_met(
    metrics: Metrics, max_misroute: float | None, weak_share: tuple[float, float] | None
) -> bool:
    if max_misroute is not None and (
        metrics.misroute is None or metrics.misroute > max_misroute + 1e-12
    ):
        return False
    if weak_share is not None:
        share = metrics.weak_share
        return share is not None and weak_share[0] - 1e-12 <= share <= weak_share[1] + 1e-12
    return True
