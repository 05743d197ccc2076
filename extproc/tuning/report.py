"""The evaluation report: number formats, metric tables, confusion matrices, breakdowns and
the threshold sweep as document blocks (`document`); and the same figures as JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from extproc.tuning.document import Block, Figure, Heading, Para, Table
from extproc.tuning.evaluate import EvalResult, Sweep, SweepPoint
from extproc.tuning.formats import count, money, pct, ratio
from extproc.tuning.metrics import Metrics
from extproc.tuning.report_curve import (
    LOSES_MARK,
    curve_blocks,
    curves_json,
    losers,
    loses_note,
    slo_blocks,
    tier_table,
)
from extproc.tuning.svg import Axes, Series, confusion_svg, curve_svg

__all__ = [
    "count",
    "eval_blocks",
    "eval_json",
    "metrics_blocks",
    "metrics_table",
    "money",
    "pct",
    "ratio",
]

# ---------------------------------------------------------------------------------------------
# the evaluation report


def metric_rows(tiers: Sequence[str]) -> list[tuple[str, Callable[[Metrics], str]]]:
    weak, strong = tiers[0], tiers[-1]
    rows: list[tuple[str, Callable[[Metrics], str]]] = [
        ("records", lambda m: count(m.records)),
        ("labelled", lambda m: count(m.labelled)),
        ("misroute", lambda m: pct(m.misroute)),
        ("  under-routed (FN)", lambda m: count(m.under)),
        ("  over-routed (FP)", lambda m: count(m.over)),
        (f"precision {strong}", lambda m: pct(m.precision)),
        (f"recall {strong}", lambda m: pct(m.recall)),
        (f"F1 {strong}", lambda m: ratio(m.f1)),
        (f"{weak} share", lambda m: pct(m.weak_share)),
    ]
    rows += [(f"{tier} share", _share_of(tier)) for tier in tiers[1:-1]]
    rows += [
        ("cost / 1k requests", lambda m: money(m.cost_per_1k)),
        ("quality", lambda m: ratio(m.quality)),
        ("quality retained", lambda m: pct(m.quality_retained)),
        ("PGR", lambda m: ratio(m.pgr)),
    ]
    return rows


def _share_of(tier: str) -> Callable[[Metrics], str]:
    def get(metrics: Metrics) -> str:
        return pct(metrics.shares.get(tier))

    return get


def metrics_table(columns: Sequence[Metrics], tiers: Sequence[str]) -> Table:
    """The figures side by side; a version misrouting more than always-weak is marked `!`."""
    lost = losers(columns, tiers)
    rows = []
    for label, get in metric_rows(tiers):
        cells = [get(m) for m in columns]
        if all(c == "—" for c in cells):
            continue
        if label == "labelled" and all(m.labelled == m.records for m in columns):
            continue
        rows.append([label, *cells])
    names = [m.name + (LOSES_MARK if m.name in lost else "") for m in columns]
    return Table(["", *names], rows)


def metrics_blocks(columns: Sequence[Metrics], tiers: Sequence[str]) -> list[Block]:
    """The figures table and, when a version loses to always-weak, the note saying so."""
    return [metrics_table(columns, tiers), *loses_note(losers(columns, tiers), tiers)]


def confusion_table(metrics: Metrics) -> Table:
    tiers = metrics.tiers
    rows = [[label, *(count(metrics.confusion[label][t]) for t in tiers)] for label in tiers]
    return Table(["label \\ decision", *tiers], rows)


def eval_blocks(result: EvalResult) -> list[Block]:
    """The whole evaluation report."""
    tiers = result.tiers
    blocks: list[Block] = [Heading(f"cascade eval: {result.source}", 1), Para(_summary(result))]
    if not result.predictors:
        blocks.append(Para("No record could be decided: nothing to report."))
        return blocks
    columns = [result.overall[p] for p in result.predictors] + list(result.baselines.values())
    blocks += [Heading("Figures"), *metrics_blocks(columns, tiers)]
    blocks += [Para(f"Note: {note}.") for note in result.notes]
    if result.graded:
        blocks.append(Para(f"Quality: graded scores from {result.quality_fields}."))
    blocks += slo_blocks(result.slo, tiers)
    labelled = [result.overall[p] for p in result.predictors if result.overall[p].labelled]
    if labelled:
        blocks += [
            Heading("Misroutes per label tier (share of the records labelled with it)"),
            tier_table(labelled, tiers),
        ]
    blocks += curve_blocks(result.curves, result.curve_lines, tiers)
    blocks.append(Heading("Confusion matrices (rows: label, columns: decision)"))
    for name in result.predictors:
        metrics = result.overall[name]
        if metrics.labelled:
            blocks += [Para(f"`{name}`"), confusion_table(metrics)]
            blocks.append(
                Figure(
                    f"confusion-{name}", f"{name}", confusion_svg(name, tiers, metrics.confusion)
                )
            )
    for field_name, groups in result.breakdowns.items():
        blocks += [Heading(f"By {field_name}"), breakdown_table(groups, result.predictors, tiers)]
    if result.sweeps:
        blocks += sweep_blocks(result)
    return blocks


def _summary(result: EvalResult) -> str:
    read = result.read
    first = result.overall[result.predictors[0]] if result.predictors else None
    parts = [f"{read.records:,} records read"]
    if first is not None and first.labelled:
        top = result.tiers[-1]
        positives = sum(first.confusion[top].values())
        share = pct(positives / first.labelled)
        parts.append(f"{count(first.labelled)} labelled ({top}: {count(positives)}, {share})")
    if result.no_text:
        parts.append(f"{result.no_text:,} without text (only a logged decision scored)")
    if result.unknown_labels:
        odd = ", ".join(f"{k!r} x{v}" for k, v in sorted(result.unknown_labels.items()))
        parts.append(f"labels that are not tiers, treated as unlabelled: {odd}")
    if read.summary():
        parts.append(read.summary())
    return f"{'; '.join(parts)}. Config: `{result.config}`."


def breakdown_table(
    groups: Sequence[tuple[str, dict[str, Metrics]]],
    predictors: Sequence[str],
    tiers: Sequence[str],
) -> Table:
    top, weak = tiers[-1], tiers[0]
    headers = ["value", "records", f"{top} labels"]
    for name in predictors:
        headers += [f"{name} misroute", f"{name} {weak} share", f"{name} recall"]
    rows = []
    for value, by_predictor in groups:
        first = next(iter(by_predictor.values()))
        positives = sum(first.confusion[top].values())
        row = [
            value,
            count(first.records),
            pct(positives / first.labelled) if first.labelled else "—",
        ]
        for name in predictors:
            m = by_predictor.get(name)
            row += [pct(m.misroute), pct(m.weak_share), pct(m.recall)] if m else ["—"] * 3
        rows.append(row)
    return Table(headers, rows)


def sweep_blocks(result: EvalResult) -> list[Block]:
    tiers = result.tiers
    blocks: list[Block] = [
        Heading(f"Threshold sweep: {tiers[-1]} share vs quality"),
        Para(
            "Each version with its character rule replaced by `chars > t`, for t over the "
            "quantiles of the lengths of requests no other rule sends up; the dot is the "
            "version as configured."
        ),
    ]
    blocks.append(sweep_figure(result, list(result.sweeps.values())))
    for sweep in result.sweeps.values():
        blocks += [
            Para(f"`{sweep.version}` (configured: {_threshold(sweep.current)}, marked *)"),
            sweep_table(sweep, tiers[-1]),
        ]
    return blocks


def sweep_table(sweep: Sweep, top: str, rows: int = 12) -> Table:
    """About `rows` evenly spaced points of the sweep, the configured one always included."""
    points = list(sweep.points)
    step = max(1, len(points) // rows)
    shown = [
        p
        for i, p in enumerate(points)
        if i % step == 0 or i == len(points) - 1 or p.threshold in (None, sweep.current)
    ]
    columns: list[tuple[str, Callable[[SweepPoint], str]]] = [
        (f"{top} share", lambda p: pct(p.strong_share)),
        ("misroute", lambda p: pct(p.misroute)),
        ("quality", lambda p: ratio(p.quality)),
        ("cost / 1k", lambda p: money(p.cost_per_1k)),
    ]
    columns = [(h, get) for h, get in columns if any(get(p) != "—" for p in shown)]
    table = []
    for point in shown:
        name = "none" if point.threshold is None else f"> {point.threshold}"
        mark = " *" if point.threshold == sweep.current else ""
        table.append([name + mark, *(get(point) for _h, get in columns)])
    return Table(["chars", *(h for h, _get in columns)], table)


def _threshold(value: int | None) -> str:
    return "no length rule" if value is None else f"chars > {value}"


def sweep_figure(result: EvalResult, sweeps: Sequence[Sweep], name: str = "sweep") -> Figure:
    """Strong share vs quality (or accuracy when records carry no per-model results)."""
    top = result.tiers[-1]
    has_quality = all(p.quality is not None for s in sweeps for p in s.points)

    def y_of(quality: float | None, misroute: float | None) -> float:
        if has_quality:
            return quality or 0.0
        return 1 - (misroute or 0.0)

    series = []
    for sweep in sweeps:
        points = [(p.strong_share, y_of(p.quality, p.misroute)) for p in sweep.points]
        op = sweep.operating
        series.append(
            Series(
                sweep.version,
                points,
                [(op.strong_share, y_of(op.quality, op.misroute), sweep.version)],
            )
        )
    base = result.baselines
    weak_b = base.get(f"always-{result.tiers[0]}")
    strong_b = base.get(f"always-{top}")
    if weak_b and strong_b:
        ends = [
            (0.0, y_of(weak_b.quality, weak_b.misroute)),
            (1.0, y_of(strong_b.quality, strong_b.misroute)),
        ]
        series.append(
            Series(
                "random",
                ends,
                [
                    (x, y, label)
                    for (x, y), label in zip(ends, ("all weak", "all strong"), strict=True)
                ],
                dashed=True,
                color="#777",
                below=True,
            )
        )
    axes = Axes(
        title=f"{top} share vs {'quality' if has_quality else 'accuracy (1 - misroute)'}",
        x_label=f"share of requests sent to {top}",
        y_label="quality (routed model correct)" if has_quality else "1 - misroute",
        x_range=(0.0, 1.0),
    )
    return Figure(name, axes.title, curve_svg(axes, series))


# ---------------------------------------------------------------------------------------------
# JSON


def metrics_json(metrics: Metrics, loses_to_weak: bool | None = None) -> dict[str, Any]:
    data = dataclasses.asdict(metrics)
    data["tiers"] = list(metrics.tiers)
    data["weak_share"] = metrics.weak_share
    data["strong_share"] = metrics.strong_share
    data["per_tier"] = {t: dataclasses.asdict(f) for t, f in metrics.per_tier().items()}
    if loses_to_weak is not None:
        data["loses_to_always_weak"] = loses_to_weak
    return data


def eval_json(result: EvalResult) -> dict[str, Any]:
    columns = [result.overall[p] for p in result.predictors] + list(result.baselines.values())
    lost = losers(columns, result.tiers)
    return {
        "source": result.source,
        "config": result.config,
        "tiers": list(result.tiers),
        "read": dataclasses.asdict(result.read),
        "no_text": result.no_text,
        "unknown_labels": result.unknown_labels,
        "weighted": result.weighted,
        "notes": result.notes,
        "seconds": round(result.seconds, 3),
        "predictors": {n: metrics_json(result.overall[n], n in lost) for n in result.predictors},
        "baselines": {n: metrics_json(m) for n, m in result.baselines.items()},
        "breakdowns": {
            f: [
                {"value": v, "predictors": {n: metrics_json(m) for n, m in by.items()}}
                for v, by in groups
            ]
            for f, groups in result.breakdowns.items()
        },
        "sweeps": {
            v: {
                "current": s.current,
                "operating": dataclasses.asdict(s.operating),
                "points": [dataclasses.asdict(p) for p in s.points],
            }
            for v, s in result.sweeps.items()
        },
        "quality_fields": result.quality_fields,
        "graded_quality": result.graded,
        "curves": curves_json(result.curves, result.curve_lines),
        "slo": dataclasses.asdict(result.slo) if result.slo else None,
    }
