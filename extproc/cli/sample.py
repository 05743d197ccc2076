"""`cascade sample` (registered by `extproc.cli.tuning`): write a labelling sheet; read one back."""

from __future__ import annotations

import argparse
import sys

from extproc.cli.config import load_config_or_exit
from extproc.cli.tuning_common import read_all, version_or_exit
from extproc.config.snapshot import Snapshot
from extproc.tuning.dataset import ReadStats
from extproc.tuning.sample import SampleOptions, feedback_suspects, sample
from extproc.tuning.sheet import jsonl_lines, read_sheet, sheet_text


def run_sample(args: argparse.Namespace) -> int:
    snapshot = load_config_or_exit(args.config)
    if args.read_sheet is not None:
        return _read_back(args, snapshot)
    if not args.data:
        print("cascade: sample needs TRACES (or --read-sheet SHEET)", file=sys.stderr)
        return 2
    classifier = snapshot.classifiers[version_or_exit(snapshot, args.classifier)]
    options = SampleOptions(n=args.n, seed=args.seed, tail=args.tail, segment=args.segment or None)
    stats = ReadStats()
    flagged: dict[str, str] = {}
    if "-" not in args.data:  # files can be read twice: first for feedback-flagged ids
        flagged = feedback_suspects(read_all(args.data, ReadStats()))
    result = sample(read_all(args.data, stats), options, classifier, flagged)
    text = sheet_text(result, options.segment, blind=args.blind)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    strata = ", ".join(
        f"{name} {rows}/~{population:,.0f}" for name, (population, rows) in result.strata.items()
    )
    where = f" to {args.output}" if args.output else ""
    print(
        f"sampled {len(result.rows)} of {result.records:,} records (seed {options.seed}){where}; "
        f"rows/population by stratum: {strata}; long = {result.long_chars:,}+ characters",
        file=sys.stderr,
    )
    if stats.summary():
        print(f"cascade: {stats.summary()}", file=sys.stderr)
    return 0 if result.rows else 1


def _read_back(args: argparse.Namespace, snapshot: Snapshot) -> int:
    stats = ReadStats()
    found = read_sheet(read_all([str(args.read_sheet)], stats), snapshot.tier_names)
    stream = args.output.open("wb") if args.output else sys.stdout.buffer
    try:
        for line in jsonl_lines(found.records):
            stream.write(line)
    finally:
        if args.output:
            stream.close()
    labels = ", ".join(f"{k} {v}" for k, v in sorted(found.labels.items()))
    print(
        f"read {len(found.records)} labelled rows ({labels or 'none'}); "
        f"{found.unlabelled} unlabelled skipped",
        file=sys.stderr,
    )
    for record_id, label in found.invalid:
        print(
            f"cascade: row {record_id}: label {label!r} is not a tier "
            f"({', '.join(snapshot.tier_names)}); skipped",
            file=sys.stderr,
        )
    return 1 if found.invalid else 0
