"""The `cascade train` report: out-of-fold figures next to the rules and the baselines.

Every scorer figure is out of fold (each record scored by a model that never saw its group). The
config's version is replayed through `classify()` by the evaluation (`evaluate.Evaluator`): rules
are not fitted, so its figures need no folds. The length-only baseline sends the records with the
longest user text to the top tier, at the scorer's strong share (a point) and swept (a curve).
Tables and curves come from the evaluation report's functions, so `train` and `eval` print the
same figures the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from extproc.config.snapshot import Snapshot
from extproc.tuning.curve import CurveMetrics, CurvePoint, oracle_curve, score_curve, summarize
from extproc.tuning.dataset import ReadStats, Record
from extproc.tuning.document import Block, Heading, Para, Table
from extproc.tuning.evaluate import Evaluator, evaluate
from extproc.tuning.learning_curve import CurveRow, learning_curve, roc_auc
from extproc.tuning.metrics import CostModel, Metrics, Tally, baselines, metrics_from_tally
from extproc.tuning.quality import QualityReader
from extproc.tuning.report import metrics_blocks, pct, ratio
from extproc.tuning.report_curve import curve_blocks
from extproc.tuning.train import Trained

SCORER = "scorer (out of fold)"
LENGTH = "length-only"


@dataclass(slots=True)
class TrainFigures:
    tiers: tuple[str, ...]
    version: str
    columns: list[Metrics]
    curves: list[CurveMetrics]
    lines: list[Any]
    learning: list[CurveRow]
    auc: float | None
    length_auc: float | None
    verdict: list[str] = field(default_factory=list)
    beats_rules: bool | None = None
    beats_length: bool | None = None

    def curve(self, name: str) -> CurveMetrics | None:
        return next((c for c in self.curves if c.name == name), None)


def figures(
    trained: Trained,
    records: Sequence[Record],
    snapshot: Snapshot,
    version: str,
    cost_model: CostModel,
    *,
    with_learning_curve: bool = True,
) -> TrainFigures:
    tiers = trained.tiers
    design = trained.design
    decided = trained.decisions()
    top = len(tiers) - 1
    share = float((decided == top).mean())
    # length-only at the scorer's share: the longest user texts go to the top tier
    order = np.argsort(-design.chars, kind="mergesort")
    by_length = np.zeros(len(records), dtype=np.intp)
    by_length[order[: round(share * len(records))]] = top
    reader = QualityReader(tiers)
    priced = cost_model.priced
    scorer_tally, length_tally = Tally(tiers), Tally(tiers)
    weak_q: list[float] = []
    strong_q: list[float] = []
    with_quality: list[int] = []
    for row, record in enumerate(records):
        costs = cost_model.costs(record)
        quality = reader(record)
        scorer_tally.add(tiers[decided[row]], record.label, 1.0, costs, quality)
        length_tally.add(tiers[by_length[row]], record.label, 1.0, costs, quality)
        if quality is not None:
            with_quality.append(row)
            weak_q.append(quality[tiers[0]])
            strong_q.append(quality[tiers[-1]])
    evaluator = Evaluator(snapshot, [version], cost_model, sweep=True, curves=True)
    result = evaluate(records, evaluator, "train", ReadStats())
    scorer_m = metrics_from_tally(SCORER, scorer_tally, priced)
    length_m = metrics_from_tally(f"{LENGTH}@{pct(share)}".replace(" ", ""), length_tally, priced)
    rules_m = result.overall[version]
    base = baselines(scorer_tally, priced, {SCORER: scorer_m})
    columns = [scorer_m, rules_m, length_m, *base.values()]
    curves: list[CurveMetrics] = []
    lines: list[Any] = []
    quality_pair = None
    if with_quality:
        quality_pair = (weak_q, strong_q)
        curves, lines = _curves(trained, np.array(with_quality), quality_pair)
        curves += result.curves
        lines += result.curve_lines
    positive = design.ranks >= top
    learning: list[CurveRow] = []
    if with_learning_curve:
        learning = learning_curve(design, trained.folds, trained.options, share, quality_pair)
    found = TrainFigures(
        tiers=tiers,
        version=version,
        columns=columns,
        curves=curves,
        lines=lines,
        learning=learning,
        auc=roc_auc(trained.oof[:, -1], positive),
        length_auc=roc_auc(design.chars, positive),
    )
    _verdict(found, scorer_m, rules_m, length_m)
    return found


def _curves(
    trained: Trained, rows: np.ndarray[Any, Any], quality: tuple[list[float], list[float]]
) -> tuple[list[CurveMetrics], list[Any]]:
    """The scorer's and the length-only curves over the records with quality."""
    weak_q, strong_q = quality
    top = len(trained.tiers) - 1
    oracle = oracle_curve(weak_q, strong_q)
    up = trained.decisions()[rows] == top
    gain = np.array(strong_q) - np.array(weak_q)
    total = gain.sum()
    point = CurvePoint(float(up.mean()), float(gain[up].sum() / total)) if total else None
    curves: list[CurveMetrics] = []
    lines: list[Any] = []
    for name, scores, op in (
        (SCORER, trained.oof[rows, -1], point),
        (LENGTH, trained.design.chars[rows], None),
    ):
        curve = score_curve(scores.tolist(), weak_q, strong_q, None, name, op)
        if curve is not None:
            curves.append(summarize(curve, oracle))
            lines.append(curve)
    return curves, lines


def _verdict(found: TrainFigures, scorer: Metrics, rules: Metrics, length: Metrics) -> None:
    version = found.version
    mine, family = found.curve(SCORER), found.curve(f"{version} family")
    baseline = found.curve(LENGTH)
    lines = found.verdict
    if mine is not None and mine.apgr is not None:
        rules_apgr = family.apgr if family is not None else None
        rules_name = f"{version} family"
        if rules_apgr is None:
            point = found.curve(version)
            rules_name = version
            rules_apgr = None if point is None else point.pgr
        found.beats_rules = rules_apgr is not None and mine.apgr > rules_apgr
        found.beats_length = baseline is not None and mine.apgr > (baseline.apgr or 0.0)
        lines.append(
            f"APGR out of fold: scorer {ratio(mine.apgr)}, {rules_name} {ratio(rules_apgr)}, "
            f"length-only {ratio(baseline.apgr if baseline else None)}; CPT(50%): scorer "
            f"{pct(mine.cpt50)}, {rules_name} {pct(family.cpt50 if family else None)}."
        )
    else:
        found.beats_rules = _fewer_misroutes(scorer, rules)
        found.beats_length = _fewer_misroutes(scorer, length)
        lines.append("No per-tier quality in the records: judged on misroute alone.")
    lines.append(
        f"Misroute at the operating point: scorer {pct(scorer.misroute)} "
        f"({found.tiers[-1]} share {pct(scorer.strong_share)}), {version} {pct(rules.misroute)} "
        f"({pct(rules.strong_share)}), {length.name} {pct(length.misroute)}."
    )
    lines.append(
        f"Verdict: the scorer {'BEATS' if found.beats_rules else 'does NOT beat'} {version} and "
        f"{'BEATS' if found.beats_length else 'does NOT beat'} the length-only baseline out of "
        "fold."
    )


def _fewer_misroutes(a: Metrics, b: Metrics) -> bool:
    return a.misroute is not None and b.misroute is not None and a.misroute < b.misroute


def blocks(found: TrainFigures, trained: Trained, source: str, summary: str) -> list[Block]:
    tiers = found.tiers
    options = trained.options
    design = trained.design
    group = design.group_field or "none (one group per record)"
    found_blocks: list[Block] = [
        Heading(f"cascade train: {source}", 1),
        Para(summary),
        Para(
            f"{options.folds}-fold cross-validation grouped by {group}, seed {options.seed}, "
            f"solver {trained.solver}, C {options.c:g}, 2^{options.bits} hash buckets. ROC AUC "
            f"of {tiers[-1]} out of fold: {ratio(found.auc)} (length alone: "
            f"{ratio(found.length_auc)})."
        ),
        Heading("Out-of-fold figures"),
        *metrics_blocks(found.columns, tiers),
        *curve_blocks(found.curves, found.lines, tiers),
    ]
    if found.learning:
        rows = [
            [f"{r.labels:,}", ratio(r.auc), ratio(r.apgr), pct(r.misroute)] for r in found.learning
        ]
        found_blocks += [
            Heading("Learning curve (out of fold, per training size per fold)"),
            Table(["labels", "AUC", "APGR", "misroute @ share"], rows),
        ]
    found_blocks += [Heading("Verdict"), *(Para(line) for line in found.verdict)]
    return found_blocks


def figures_json(found: TrainFigures) -> dict[str, Any]:
    return {
        "auc": found.auc,
        "length_auc": found.length_auc,
        "columns": {
            m.name: {"misroute": m.misroute, "strong_share": m.strong_share, "pgr": m.pgr}
            for m in found.columns
        },
        "curves": {
            c.name: {"apgr": c.apgr, "cpt50": c.cpt50, "cpt80": c.cpt80} for c in found.curves
        },
        "learning_curve": [
            {"labels": r.labels, "auc": r.auc, "apgr": r.apgr, "misroute": r.misroute}
            for r in found.learning
        ],
        "beats_rules": found.beats_rules,
        "beats_length": found.beats_length,
        "verdict": found.verdict,
    }
