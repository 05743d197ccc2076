"""`cascade tune` (registered by `extproc.cli.tuning`): search, review, write the new version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extproc.cli.config import load_config_or_exit
from extproc.cli.tuning_common import (
    config_label,
    cost_model,
    labelled_records,
    print_json,
    quality_spec,
    source_label,
    version_or_exit,
    write_reports,
)
from extproc.config.editing import render_config, write_atomically
from extproc.config.snapshot import DEFAULT_CONFIG
from extproc.core.errors import ConfigError
from extproc.tuning.dataset import ReadStats
from extproc.tuning.document import Block, Heading, Para, render_text
from extproc.tuning.features import SCOPES, TuneError
from extproc.tuning.report import metrics_blocks
from extproc.tuning.review import Review, review, review_json
from extproc.tuning.review_report import oof_blocks, review_blocks, rule_changes
from extproc.tuning.search import Objective
from extproc.tuning.tune import TuneOptions, tune

EXIT_SLO = 3
EXIT_LOSES = 4


def run_tune(args: argparse.Namespace) -> int:
    snapshot = load_config_or_exit(args.config)
    base = version_or_exit(snapshot, args.classifier)
    scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
    if not scopes or any(s not in SCOPES for s in scopes):
        print(f"cascade: --scopes takes some of {', '.join(SCOPES)}", file=sys.stderr)
        return 2
    if args.cv == 1 or args.cv < 0:
        print("cascade: --cv needs at least 2 folds", file=sys.stderr)
        return 2
    out: Path | None = args.out or args.config
    if out is None and not args.dry_run:
        print(
            "cascade: tune needs --out FILE (or --config FILE to add the version to); "
            "use --dry-run to write nothing",
            file=sys.stderr,
        )
        return 2
    records, _skipped = labelled_records(args.data, snapshot, ReadStats())
    options = TuneOptions(
        objective=Objective(
            max_misroute=args.max_misroute,
            weak_share=args.weak_share,
            max_strong_share=args.max_strong_share,
            goal=args.objective,
        ),
        group_by=args.group_by,
        quality=quality_spec(args),
        holdout=0.0 if args.cv else args.holdout,
        folds=args.cv,
        seed=args.seed,
        min_count=args.min_count,
        min_gain=args.min_gain,
        max_new_keywords=args.max_new_keywords,
        scopes=scopes,
        langs=args.lang,
        version=args.version,
        source=source_label(args.data),
    )
    try:
        result = tune(snapshot, base, records, options)
    except TuneError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        return 1 if not records else 2
    by = args.by if args.by is not None else ["source", "lang"]
    rev = review(result, cost_model(snapshot, args), by, include_text=not args.no_text)
    if args.by is None:  # the defaults are only shown when they say something
        rev.held_out.breakdowns = {f: g for f, g in rev.held_out.breakdowns.items() if len(g) > 1}
    written: list[str] = []
    notes: list[str] = []
    feasible = result.fit.feasible
    lost = rev.loses()
    if out is not None and not args.dry_run:
        if (feasible and lost is None) or args.force:
            try:
                notes.append(_write_config(args.config, out, result.version, result.spec))
            except (ConfigError, OSError) as exc:
                print(f"cascade: cannot write {out}: {exc}", file=sys.stderr)
                return 2
            written.append(str(out))
        elif not feasible:
            notes.append(
                f"the SLO is not met on the training data: {result.version} was NOT written "
                "(--force writes it anyway; the review shows the best found)"
            )
        else:
            notes.append(
                f"{lost}: {result.version} was NOT written (--force writes it anyway; the "
                "review shows it)"
            )
        report = args.report or out.with_name(f"{out.stem}-{result.version}-review.md")
        title = f"cascade tune: {result.base} -> {result.version}"
        written += [str(p) for p in write_reports([report], review_blocks(rev), title)]
    elif args.report is not None and not args.dry_run:
        title = f"cascade tune: {result.base} -> {result.version}"
        written += [str(p) for p in write_reports([args.report], review_blocks(rev), title)]
    if args.json:
        print_json({**review_json(rev, written), "notes": notes})
    else:
        sys.stdout.write(render_text(_summary(rev, written, notes, config_label(args.config))))
    if not feasible:
        return EXIT_SLO
    return EXIT_LOSES if lost is not None else 0


def _write_config(source: Path | None, out: Path, version: str, spec: dict[str, Any]) -> str:
    text = (source or DEFAULT_CONFIG).read_text(encoding="utf-8")
    new_text, kept = render_config(text, str(out), version, spec)
    write_atomically(out, new_text)
    if kept:
        return f"{version} added to {out} (the rest of the file unchanged)"
    return f"{version} added to {out}, which was re-serialised: comments and layout were lost"


def _summary(rev: Review, written: list[str], notes: list[str], config: str) -> list[Block]:
    result = rev.result
    held = rev.held_out
    columns = [held.overall[result.base], held.overall[result.version]]
    weak = f"always-{result.snapshot.tier_names[0]}"
    for name in (weak, f"random@{result.version}"):
        if name in held.baselines:
            columns.append(held.baselines[name])
    fixed = sum(c.effect == "fixed" for c in rev.changes)
    broken = sum(c.effect == "broken" for c in rev.changes)
    changed = "request changes" if len(rev.changes) == 1 else "requests change"
    slo_train = "met" if result.fit.feasible else "NOT met"
    fitted = {
        "holdout": f"fitted on {len(result.train):,}, {len(result.test):,} held out",
        "cv": f"{len(result.folds)}-fold cross-validation, then fitted on all",
        "in-sample": "fitted on all, no hold-out",
    }[result.mode]
    slo_held = "met" if rev.feasible_held_out else "NOT met"
    blocks: list[Block] = [
        Heading(f"cascade tune: {result.base} -> {result.version} ({config})"),
        Para(
            f"{len(result.records):,} labelled records from {result.options.source}; {fitted}. "
            f"{result.options.objective.describe()}. SLO on the training data: {slo_train}; "
            f"on {rev.held_out_name}: {slo_held}."
        ),
        rule_changes(result),
        Para(f"Figures on {rev.held_out_name}:"),
        *metrics_blocks(columns, result.snapshot.tier_names),
        Para(f"{len(rev.changes):,} {changed} tier there: {fixed:,} fixed, {broken:,} broken."),
    ]
    if result.folds:
        size = len(result.folds)
        before = sum(f.before_misroute for f in result.folds) / size
        after = sum(f.after_misroute for f in result.folds) / size
        grouped = f", grouped by {result.options.group_by}" if result.options.group_by else ""
        blocks.append(
            Para(
                f"Cross-validation{grouped}, mean held-out misroute over {size} folds: "
                f"{100 * before:.1f} % -> {100 * after:.1f} %."
            )
        )
    blocks += oof_blocks(rev)
    blocks += [Para(note) for note in notes]
    if written:
        blocks.append(Para("Wrote: " + ", ".join(written)))
    if result.fit.feasible and written and not any("NOT written" in n for n in notes):
        blocks.append(
            Para(
                f"Next: review the report, `cascade check-config {written[0]}`, then canary it: "
                f"`canary: {{version: {result.version}, weight: 10}}` in the config."
            )
        )
    return blocks
