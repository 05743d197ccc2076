"""The tune review as a report: rule diff, before/after figures, cross-validation folds,
confusion matrices, breakdowns, and examples of the requests that change tier."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from extproc.config.editing import dump_yaml
from extproc.tuning.document import Block, Code, Figure, Heading, Para, Table
from extproc.tuning.evaluate import EvalResult
from extproc.tuning.features import THRESHOLD_KINDS
from extproc.tuning.formats import ratio
from extproc.tuning.report import (
    breakdown_table,
    confusion_table,
    metrics_blocks,
    pct,
    sweep_figure,
)
from extproc.tuning.report_curve import curve_blocks, tier_table
from extproc.tuning.review import EFFECTS, Change, Review, by_effect
from extproc.tuning.svg import confusion_svg
from extproc.tuning.tune import TuneResult

MAX_EXAMPLES = 30


def spec_yaml(version: str, spec: dict[str, Any]) -> str:
    return dump_yaml({version: spec})


def rule_changes(result: TuneResult) -> Table:
    before, after = result.base_params, result.params
    rows = []
    if before.scope != after.scope:
        rows.append(["text scope", before.scope, after.scope])
    added = [w for w in after.keywords if w not in before.keywords]
    removed = [w for w in before.keywords if w not in after.keywords]
    if added:
        rows.append(["keywords added", "", ", ".join(added)])
    if removed:
        rows.append(["keywords removed", ", ".join(removed), ""])
    for kind in THRESHOLD_KINDS:
        old, new = before.gt(kind), after.gt(kind)
        if old != new:
            share = result.shares_above.get(kind)
            quantile = f" (top {100 * share:.1f} % of requests)" if share is not None else ""
            rows.append(
                [
                    f"{kind} rule",
                    "off" if old is None else f"> {old}",
                    "off" if new is None else f"> {new}{quantile}",
                ]
            )
    if not rows:
        rows.append(["(no change)", "", ""])
    return Table(["change", result.base, result.version], rows)


def review_blocks(rev: Review) -> list[Block]:
    result = rev.result
    tiers = result.snapshot.tier_names
    options = result.options
    held = rev.held_out
    before, after = held.overall[result.base], held.overall[result.version]
    split = {
        "holdout": f"hold-out: fitted on {len(result.train):,} records, figures on the other "
        f"{len(result.test):,} ({options.holdout:.0%}, seed {options.seed})",
        "cv": f"{len(result.folds)}-fold cross-validation (seed {options.seed}); the version "
        f"written was fitted on all {len(result.records):,} records",
        "in-sample": "no hold-out (--holdout 0): every figure is in-sample",
    }[result.mode]
    verdict = "met" if result.fit.feasible else "NOT met"
    held_verdict = "met" if rev.feasible_held_out else "NOT met"
    data = options.source or "labelled records"
    blocks: list[Block] = [
        Heading(f"cascade tune: {result.base} -> {result.version}", 1),
        Para(
            f"Data: {data}, {len(result.records):,} labelled records with text; {split}. "
            f"{options.objective.describe()}. SLO on the training data: {verdict}; on "
            f"{rev.held_out_name}: {held_verdict}."
        ),
        Heading("Rule changes"),
        rule_changes(result),
        Code(_diff(result), "diff"),
        Heading(f"Before / after on {rev.held_out_name} ({count_text(held)})"),
        *metrics_blocks([before, after, *held.baselines.values()], tiers),
    ]
    blocks += [Para(f"Note: {note}.") for note in held.notes]
    blocks += oof_blocks(rev)
    blocks += [
        Heading(f"Misroutes per label tier ({rev.held_out_name})"),
        tier_table([before, after], tiers),
    ]
    blocks += curve_blocks(held.curves, held.curve_lines, tiers)
    if result.folds:
        blocks += [Heading("Cross-validation (held-out fold figures)"), _folds_table(result)]
    train_before, train_after = rev.train.overall[result.base], rev.train.overall[result.version]
    if result.mode == "holdout":
        blocks += [
            Heading("Training split (what the search saw)"),
            Table(
                ["", result.base, result.version],
                [
                    ["misroute", pct(train_before.misroute), pct(train_after.misroute)],
                    [
                        f"{tiers[0]} share",
                        pct(train_before.weak_share),
                        pct(train_after.weak_share),
                    ],
                ],
            ),
        ]
    blocks.append(Heading("Confusion matrices (rows: label, columns: decision)"))
    for metrics in (before, after):
        blocks += [
            Para(f"`{metrics.name}`"),
            confusion_table(metrics),
            Figure(
                f"confusion-{metrics.name}",
                metrics.name,
                confusion_svg(metrics.name, tiers, metrics.confusion),
            ),
        ]
    if held.sweeps:
        blocks.append(Heading(f"{tiers[-1]} share vs quality"))
        blocks.append(sweep_figure(held, list(held.sweeps.values())))
    for field_name, groups in held.breakdowns.items():
        blocks += [
            Heading(f"By {field_name}"),
            breakdown_table(groups, [result.base, result.version], tiers),
        ]
    blocks += _change_blocks(rev)
    blocks += [
        Heading("Search path (training split)"),
        Code("\n".join(result.fit.moves) or "(no move improved the score)"),
    ]
    return blocks


def count_text(result: EvalResult) -> str:
    first = next(iter(result.overall.values()))
    return f"{first.records:,.0f} records"


def _diff(result: TuneResult) -> str:
    old = spec_yaml(result.base, {k: v for k, v in result.base_spec.items() if k != "description"})
    new = spec_yaml(result.version, {k: v for k, v in result.spec.items() if k != "description"})
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), result.base, result.version, lineterm="", n=2
    )
    return "\n".join(lines) or "(identical rules)"


def _folds_table(result: TuneResult) -> Table:
    rows = [
        [
            str(f.fold),
            f"{f.records:,}",
            pct(f.before_misroute),
            pct(f.after_misroute),
            pct(f.weak_misroute),
            pct(f.before_weak),
            pct(f.after_weak),
            ratio(f.after_pgr),
        ]
        for f in result.folds
    ]
    if result.folds:
        size = len(result.folds)
        rows.append(
            [
                "mean",
                "",
                pct(sum(f.before_misroute for f in result.folds) / size),
                pct(sum(f.after_misroute for f in result.folds) / size),
                pct(sum(f.weak_misroute for f in result.folds) / size),
                pct(sum(f.before_weak for f in result.folds) / size),
                pct(sum(f.after_weak for f in result.folds) / size),
                "",
            ]
        )
    weak = result.snapshot.tier_names[0]
    return Table(
        [
            "fold",
            "records",
            "misroute before",
            "misroute after",
            f"always-{weak}",
            f"{weak} before",
            f"{weak} after",
            "PGR after",
        ],
        rows,
    )


def oof_blocks(rev: Review) -> list[Block]:
    """The out-of-fold verdict: does the version beat always-weak (and random) where it was not
    fitted?"""
    oof = rev.out_of_fold()
    if oof is None:
        return []
    result = rev.result
    weak = result.snapshot.tier_names[0]
    pgr = ""
    if oof.pgr is not None:
        pgr = (
            f"; PGR {ratio(oof.before_pgr)} -> {ratio(oof.pgr)} at a "
            f"{pct(oof.strong_share)} strong share (random at that share: {ratio(oof.random_pgr)}"
            f", the oracle: {ratio(oof.oracle_pgr)})"
        )
    lost = rev.loses()
    if lost:
        verdict = f"It LOSES: {lost}."
    elif result.options.objective.goal == "pgr":
        verdict = "It beats random routing at its strong share."
    else:
        verdict = f"It beats always-{weak}."
    return [
        Heading("Out of fold"),
        Para(
            f"On {oof.where} ({oof.records:,} records): misroute {result.base} "
            f"{pct(oof.before_misroute)} -> {result.version} {pct(oof.misroute)}, always-{weak} "
            f"{pct(oof.weak_misroute)}{pgr}. {verdict}"
        ),
    ]


def _change_blocks(rev: Review) -> list[Block]:
    changes = rev.changes
    counts = {e: sum(c.effect == e for c in changes) for e in EFFECTS}
    shown = pick_examples(changes, MAX_EXAMPLES)
    blocks: list[Block] = [
        Heading(f"Requests that change tier ({rev.held_out_name})"),
        Para(
            f"{len(changes):,} change tier: {counts['fixed']:,} fixed (now as labelled), "
            f"{counts['broken']:,} broken (were as labelled), {counts['moved']:,} moved between "
            f"two wrong tiers. Shown: {len(shown)}, as many fixed as broken where there are both."
        ),
    ]
    if changes:
        rows = [
            [
                c.id,
                c.label,
                f"{c.before} ({c.before_reason})",
                f"{c.after} ({c.after_reason})",
                c.effect,
                c.text,
            ]
            for c in shown
        ]
        blocks.append(
            Table(["id", "label", rev.result.base, rev.result.version, "effect", "text"], rows)
        )
    return blocks


def pick_examples(changes: Sequence[Change], limit: int) -> list[Change]:
    """Up to `limit` changes, split evenly between fixed, broken and moved when possible."""
    groups = [[c for c in changes if c.effect == e] for e in EFFECTS]
    picked: list[Change] = []
    index = 0
    while len(picked) < limit and any(index < len(g) for g in groups):
        picked += [g[index] for g in groups if index < len(g)][: limit - len(picked)]
        index += 1
    return sorted(picked, key=by_effect)
