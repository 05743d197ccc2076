"""Cost-quality curves, as RouteLLM defines them (Ong et al., "RouteLLM: Learning to Route LLMs
with Preference Data", 2024), from per-record (score or decision, weak quality, strong quality).

- PGR (performance gap recovered) of a routing = (Q - Q_weak) / (Q_strong - Q_weak), where Q is
  the mean quality of the model each record was routed to and Q_weak / Q_strong those of sending
  everything to the weak / strong model. The x axis is the strong share (share of calls to the
  strong model).
- A router with a score (higher: more likely to need the strong model) sweeps its threshold: at
  threshold t the records scoring >= t go strong. Records with equal scores move together; between
  two thresholds the curve is linear (what breaking the ties at random gives). The sweep runs from
  (0, 0) (nothing strong) to (1, 1) (everything strong).
- A rule-only version is a point. Its family (its length threshold swept) is a curve; where the
  family does not reach share 0 or 1, its ends are joined to (0, 0) and (1, 1) by straight lines,
  which mixing it at random with always-weak / always-strong achieves (`joined`).
- CPT(x) (call-performance threshold) = the smallest strong share at which the curve reaches
  PGR x (the first crossing, interpolated linearly; RouteLLM interpolates with `np.interp`, the
  same on a monotone curve). For a point: its share if its PGR reaches x, else undefined.
- APGR = the area under PGR against strong share over [0, 1] (trapezoids), which is RouteLLM's
  (AUC - AUC_weak) / (AUC_strong - AUC_weak) for a curve spanning [0, 1]. Random routing gives
  the diagonal: PGR = share, CPT(x) = x, APGR = 0.5.
- The oracle knows every answer: at a budget it sends strong the records where strong gains most.
  Its curve is the upper bound of any router's; here it is reported as the best PGR with *at most*
  that share (the running maximum), since sending records where strong is worse only loses.

`cost_quality` is the one entry point for other tools (e.g. a trained scorer's report).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np


@dataclass(frozen=True, slots=True)
class CurvePoint:
    share: float
    pgr: float


@dataclass(frozen=True, slots=True)
class Curve:
    name: str
    #: "curve" (a threshold sweep), "point" (one routing), "family" (a rule's threshold swept)
    kind: str
    points: tuple[CurvePoint, ...]  # ascending share
    #: the configured operating point (a version's own decisions), when there is one
    operating: CurvePoint | None = None
    #: ends joined to (0, 0) / (1, 1) by random mixing
    joined: bool = False

    def pgr_at(self, share: float) -> float | None:
        """PGR at a strong share, interpolated; for a point, only at its own share."""
        points = self.points
        if self.kind == "point":
            return points[0].pgr if abs(points[0].share - share) < 1e-9 else None
        if not points or share < points[0].share - 1e-12 or share > points[-1].share + 1e-12:
            return None
        for left, right in pairwise(points):
            if left.share - 1e-12 <= share <= right.share + 1e-12:
                width = right.share - left.share
                if width <= 1e-15:
                    return max(left.pgr, right.pgr)
                return left.pgr + (share - left.share) / width * (right.pgr - left.pgr)
        return points[-1].pgr

    def cpt(self, target: float) -> float | None:
        """The smallest strong share reaching PGR `target`, or None when it never does."""
        points = self.points
        if not points:
            return None
        if points[0].pgr >= target - 1e-12:
            return points[0].share
        if self.kind == "point":
            return None
        for left, right in pairwise(points):
            if right.pgr >= target - 1e-12 > left.pgr - 1e-12:
                rise = right.pgr - left.pgr
                return left.share + (target - left.pgr) / rise * (right.share - left.share)
        return None

    @property
    def apgr(self) -> float | None:
        """Area under the curve over [0, 1]; None for a point or a curve not spanning [0, 1]."""
        points = self.points
        if self.kind == "point" or len(points) < 2:
            return None
        if points[0].share > 1e-9 or points[-1].share < 1 - 1e-9:
            return None
        return sum((b.share - a.share) * (a.pgr + b.pgr) / 2 for a, b in pairwise(points))


@dataclass(frozen=True, slots=True)
class CurveMetrics:
    """The figures of one curve, as reports show them."""

    name: str
    kind: str
    share: float | None  # strong share at the operating point (None: no operating point)
    pgr: float | None  # PGR there
    random_pgr: float | None  # random routing at the same share (= the share)
    oracle_pgr: float | None  # the oracle's best with at most that share
    cpt50: float | None
    cpt80: float | None
    apgr: float | None
    joined: bool


def summarize(curve: Curve, oracle: Curve | None = None) -> CurveMetrics:
    op = curve.operating or (curve.points[0] if curve.kind == "point" else None)
    return CurveMetrics(
        name=curve.name,
        kind=curve.kind,
        share=op.share if op else None,
        pgr=op.pgr if op else None,
        random_pgr=op.share if op else None,
        oracle_pgr=oracle.pgr_at(op.share) if op and oracle else None,
        cpt50=curve.cpt(0.5),
        cpt80=curve.cpt(0.8),
        apgr=curve.apgr,
        joined=curve.joined,
    )


def _gap(
    weak: Sequence[float], strong: Sequence[float], weights: Sequence[float] | None
) -> tuple[list[float], list[float], float, float] | None:
    w = list(weights) if weights is not None else [1.0] * len(weak)
    gains = [wi * (s - q) for wi, q, s in zip(w, weak, strong, strict=True)]
    total_w, total_gain = sum(w), sum(gains)
    if total_w <= 0 or total_gain <= 1e-12 * max(1.0, total_w):
        return None  # no gap to recover (or the strong model is worse): PGR is undefined
    return w, gains, total_w, total_gain


def score_curve(
    scores: Sequence[float],
    weak: Sequence[float],
    strong: Sequence[float],
    weights: Sequence[float] | None = None,
    name: str = "",
    operating: CurvePoint | None = None,
) -> Curve | None:
    """The threshold sweep of a score (see the module docstring); None when PGR is undefined."""
    gap = _gap(weak, strong, weights)
    if gap is None:
        return None
    w, gains, total_w, total_gain = gap
    points = [CurvePoint(0.0, 0.0)]
    if len(scores):
        # highest score first, ties in input order; one point after each run of equal scores
        # (numpy's 1-D cumsum adds in sequence, as a Python loop would: the same floats)
        values = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-values, kind="stable")
        ranked = values[order]
        ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
        cum_w = np.cumsum(np.asarray(w, dtype=np.float64)[order])[ends] / total_w
        cum_g = np.cumsum(np.asarray(gains, dtype=np.float64)[order])[ends] / total_gain
        points += map(CurvePoint, cum_w.tolist(), cum_g.tolist())
    return Curve(name, "curve", tuple(points), operating)


def decision_point(
    strong_calls: Sequence[bool],
    weak: Sequence[float],
    strong: Sequence[float],
    weights: Sequence[float] | None = None,
    name: str = "",
) -> Curve | None:
    """A routing's single point: its strong share and PGR."""
    gap = _gap(weak, strong, weights)
    if gap is None:
        return None
    w, gains, total_w, total_gain = gap
    share = sum(wi for wi, up in zip(w, strong_calls, strict=True) if up) / total_w
    gained = sum(g for g, up in zip(gains, strong_calls, strict=True) if up)
    point = CurvePoint(share, gained / total_gain)
    return Curve(name, "point", (point,), point)


def oracle_curve(
    weak: Sequence[float],
    strong: Sequence[float],
    weights: Sequence[float] | None = None,
    name: str = "oracle",
) -> Curve | None:
    """The best PGR any router reaches with at most each strong share."""
    gains = [s - q for q, s in zip(weak, strong, strict=True)]
    curve = score_curve(gains, weak, strong, weights, name)
    if curve is None:
        return None
    best = -math.inf
    envelope = []
    for point in curve.points:
        best = max(best, point.pgr)
        envelope.append(CurvePoint(point.share, best))
    return Curve(name, "curve", tuple(envelope))


def random_curve(name: str = "random") -> Curve:
    return Curve(name, "curve", (CurvePoint(0.0, 0.0), CurvePoint(1.0, 1.0)))


def joined_curve(
    name: str, points: Iterable[CurvePoint], operating: CurvePoint | None = None
) -> Curve:
    """A family's points, sorted, with its ends joined to (0, 0) and (1, 1) when short of them."""
    ordered = sorted(points, key=lambda p: (p.share, p.pgr))
    joined = False
    if not ordered or ordered[0].share > 1e-9:
        ordered.insert(0, CurvePoint(0.0, 0.0))
        joined = True
    if ordered[-1].share < 1 - 1e-9:
        ordered.append(CurvePoint(1.0, 1.0))
        joined = True
    return Curve(name, "family", tuple(ordered), operating, joined)


def cost_quality(
    rows: Iterable[tuple[float | bool, float, float]],
    weights: Sequence[float] | None = None,
    name: str = "",
    with_oracle: bool = True,
    threshold: float | None = None,
) -> CurveMetrics | None:
    """Curve metrics from per-record (score or strong decision, weak quality, strong quality).

    Scores (floats) give a threshold sweep, with its operating point at `threshold` (records
    scoring >= it go strong) when given; decisions (booleans) give a point. None when the strong
    model recovers no gap on these records.
    """
    items = list(rows)
    firsts = [first for first, _w, _s in items]
    weak = [float(w) for _f, w, _s in items]
    strong = [float(s) for _f, _w, s in items]
    if items and all(isinstance(f, bool) for f in firsts):
        curve = decision_point([bool(f) for f in firsts], weak, strong, weights, name)
    else:
        scores = [float(f) for f in firsts]
        operating = None
        if threshold is not None:
            at = decision_point([x >= threshold for x in scores], weak, strong, weights)
            operating = at.operating if at is not None else None
        curve = score_curve(scores, weak, strong, weights, name, operating)
    if curve is None:
        return None
    oracle = oracle_curve(weak, strong, weights) if with_oracle else None
    return summarize(curve, oracle)
