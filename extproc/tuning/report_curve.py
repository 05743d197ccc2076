"""The evaluation report's quality sections: the cost-quality curve (table and plot), versions
that lose to always-weak, misroutes per label tier, and the SLO against the oracle's floor."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from extproc.tuning.curve import Curve, CurveMetrics, CurvePoint
from extproc.tuning.document import Block, Figure, Heading, Para, Table
from extproc.tuning.evalcurves import SloCheck
from extproc.tuning.formats import pct, ratio
from extproc.tuning.metrics import ORACLE, Metrics
from extproc.tuning.svg import Axes, Series, curve_svg

#: Appended to the name of a version that misroutes more than always-weak, in every table.
LOSES_MARK = " !"


#: Most points of one curve drawn or written to JSON (a score sweep has one per distinct score).
MAX_POINTS = 201


def thin(points: Sequence[CurvePoint], limit: int = MAX_POINTS) -> list[CurvePoint]:
    """At most `limit` points, evenly spaced in the sequence, first and last kept."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def is_baseline(name: str) -> bool:
    return name.startswith(("always-", "random@")) or name == ORACLE


def losers(columns: Sequence[Metrics], tiers: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Versions among the columns misrouting more than always-weak: name -> (theirs, weak's)."""
    weak = next((m for m in columns if m.name == f"always-{tiers[0]}"), None)
    if weak is None or weak.misroute is None:
        return {}
    return {
        m.name: (m.misroute, weak.misroute)
        for m in columns
        if not is_baseline(m.name) and m.misroute is not None and m.loses_to(weak)
    }


def loses_note(lost: dict[str, tuple[float, float]], tiers: Sequence[str]) -> list[Block]:
    if not lost:
        return []
    figures = ", ".join(f"{n} {pct(a)} against {pct(b)}" for n, (a, b) in lost.items())
    return [
        Para(
            f"`!` misroutes more than always-{tiers[0]} ({figures}): sending everything to "
            f"{tiers[0]} would be right more often."
        )
    ]


def tier_table(columns: Sequence[Metrics], tiers: Sequence[str]) -> Table:
    """Per label tier (the cheapest sufficient one): records, misrouted, under- and over-routed."""
    headers = ["label", "records"]
    for m in columns:
        headers += [f"{m.name} misroute", "under", "over"]
    rows = []
    first = columns[0].per_tier()
    for tier in tiers:
        row = [tier, f"{first[tier].labelled:,.0f}"]
        for m in columns:
            figures = m.per_tier()[tier]
            row += [pct(figures.misroute), pct(figures.under), pct(figures.over)]
        rows.append(row)
    return Table(headers, rows)


def curve_table(curves: Sequence[CurveMetrics], top: str) -> Table:
    rows = []
    for c in curves:
        name = c.name + (" (ends joined)" if c.joined else "")
        rows.append(
            [
                name,
                c.kind,
                pct(c.share),
                ratio(c.pgr),
                ratio(c.random_pgr),
                ratio(c.oracle_pgr),
                pct(c.cpt50),
                pct(c.cpt80),
                ratio(c.apgr),
            ]
        )
    headers = [
        "",
        "kind",
        f"{top} share",
        "PGR",
        "random PGR",
        "oracle PGR",
        "CPT(50%)",
        "CPT(80%)",
        "APGR",
    ]
    return Table(headers, rows)


CURVE_TEXT = (
    "PGR (performance gap recovered) against the share of requests sent to {top}, as RouteLLM "
    "defines them: a version is a point (its PGR next to random routing's and the oracle's at "
    "the same share); its family (its length rule swept) and any score are curves. CPT(x) is the "
    "smallest {top} share reaching PGR x, APGR the area under the curve (random: 0.5). A "
    "family's ends, where its thresholds reach neither 0 nor 100 %, are joined to always-{weak} "
    "and always-{top} by mixing at random ('ends joined'). The oracle column is the best any "
    "router can do with at most that share."
)


def curve_blocks(
    curves: Sequence[CurveMetrics], lines: Sequence[Curve], tiers: Sequence[str]
) -> list[Block]:
    if not curves:
        return []
    top, weak = tiers[-1], tiers[0]
    return [
        Heading(f"Cost-quality curve: PGR against {top} share"),
        Para(CURVE_TEXT.format(top=top, weak=weak)),
        curve_table(curves, top),
        curve_figure(lines, tiers),
    ]


def curve_figure(lines: Sequence[Curve], tiers: Sequence[str], name: str = "curve") -> Figure:
    top, weak = tiers[-1], tiers[0]
    series = []
    for curve in lines:
        marks = []
        if curve.kind == "point" or (curve.kind == "curve" and curve.operating is not None):
            point = curve.operating or curve.points[0]
            marks.append((point.share, point.pgr, curve.name))  # a family's is its version's
        line = [(p.share, p.pgr) for p in thin(curve.points)]
        if curve.name == "random":
            series.append(Series("random", line, (), dashed=True, color="#777", below=True))
        elif curve.name == ORACLE:
            series.append(Series("oracle bound", line, (), dashed=True, color="#000"))
        elif curve.kind == "point" and curve.name.startswith("always-"):
            series.append(Series(curve.name, [], marks, color="#777", below=True))
        elif curve.kind == "point":
            series.append(Series(curve.name, [], marks))
        else:
            series.append(Series(curve.name, line, marks))
    axes = Axes(
        title=f"PGR against {top} share",
        x_label=f"share of requests sent to {top}",
        y_label=f"PGR (0: always-{weak}, 1: always-{top})",
        x_range=(0.0, 1.0),
    )
    return Figure(name, axes.title, curve_svg(axes, series))


def slo_blocks(slo: SloCheck | None, tiers: Sequence[str]) -> list[Block]:
    if slo is None:
        return []
    weak = tiers[0]
    parts = []
    if slo.weak_share is not None:
        low, high = slo.weak_share
        parts.append(f"{weak} share {100 * low:.0f}-{100 * high:.0f} %")
    if slo.max_misroute is not None:
        parts.append(f"misroute <= {pct(slo.max_misroute)}")
    wanted = " and ".join(parts)
    where = "with its " + weak + " share in the band " if slo.weak_share else ""
    if slo.reachable:
        verdict = f"reachable: the oracle's best misroute {where}is {pct(slo.floor)}."
    else:
        verdict = (
            f"OUT OF REACH for any router: even the oracle, which knows every answer, misroutes "
            f"{pct(slo.floor)} at best {where}(the labels' own {weak} share lies outside it)."
        )
    met = ", ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in slo.met.items())
    return [Heading("SLO"), Para(f"SLO {wanted}: {verdict} {met}.")]


def curves_json(curves: Sequence[CurveMetrics], lines: Sequence[Curve]) -> dict[str, Any]:
    return {
        "metrics": [dataclasses.asdict(c) for c in curves],
        "lines": [
            {
                "name": c.name,
                "kind": c.kind,
                "joined": c.joined,
                "operating": dataclasses.asdict(c.operating) if c.operating else None,
                "points": [[p.share, p.pgr] for p in thin(c.points)],
            }
            for c in lines
        ],
    }
