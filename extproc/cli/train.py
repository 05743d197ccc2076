"""`cascade train DATA... -o MODEL`: fit the learned scorer and write its artifact.

Needs the `[tune]` extra (numpy, scikit-learn). Exit status: 0 written; 1 no usable data; 2 bad
usage or config. The report says out of fold whether the scorer beats the config's rules and the
length-only baseline; `--require-better` exits 3 (and writes nothing) when it does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extproc.cli.config import add_config_argument


def _share(text: str) -> float:
    value = float(text.rstrip("% ")) / 100 if text.strip().endswith("%") else float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1: {text!r}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "train",
        help="Fit a learned scorer on labelled requests (out-of-fold report, learning curve).",
        description=__doc__,
    )
    parser.add_argument("data", nargs="+", metavar="DATA", help="Labelled JSONL/CSV files.")
    add_config_argument(parser)
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="MODEL", help="Artifact file to write."
    )
    parser.add_argument("--classifier", help="Version to compare with (default: the stable one).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of the folds.")
    parser.add_argument("--folds", type=int, default=5, help="Cross-validation folds.")
    parser.add_argument(
        "--group-by",
        metavar="FIELD",
        help="Record field keeping groups in a fold (default: none, records split alone).",
    )
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument(
        "--target-share",
        type=_share,
        metavar="X",
        help="Top-tier share budget (default: none; --threshold decides).",
    )
    goal.add_argument(
        "--threshold",
        type=_share,
        metavar="P",
        help="Probability threshold (default: 0.5 unless --target-share is given).",
    )
    parser.add_argument(
        "--bits", type=int, default=18, help="Hash buckets as a power of two: 2^bits."
    )
    parser.add_argument("--c", type=float, default=1.0, help="Inverse L2 regularisation.")
    parser.add_argument(
        "--solver",
        choices=("auto", "liblinear", "sgd"),
        default="auto",
        help="Linear solver; auto takes sgd for large data, else liblinear.",
    )
    parser.add_argument(
        "--no-learning-curve", action="store_true", help="Skip the learning curve in the report."
    )
    parser.add_argument(
        "--require-better",
        action="store_true",
        help="Exit 3 and write nothing unless the scorer beats the rules and the length baseline.",
    )
    parser.add_argument(
        "--report",
        type=Path,
        action="append",
        metavar="FILE",
        help="Also write the report here: .md, .html or .txt; repeatable (default: none).",
    )
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument(
        "--output-tokens",
        type=float,
        default=256,
        help="Output tokens per request when records carry none.",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=1000.0,
        help="Throughput of a per_hour tier, output tokens/s at full use.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import hashlib
    import time

    from extproc.cli.config import load_config_or_exit
    from extproc.cli.tuning_common import (
        cost_model,
        labelled_records,
        print_json,
        source_label,
        version_or_exit,
        write_reports,
    )
    from extproc.config.editing import write_atomically
    from extproc.tuning.dataset import ReadStats
    from extproc.tuning.document import render_text
    from extproc.tuning.train import TrainError, TrainOptions, artifact_bytes, train
    from extproc.tuning.train_report import blocks, figures, figures_json

    started = time.perf_counter()
    snapshot = load_config_or_exit(args.config)
    version = version_or_exit(snapshot, args.classifier)
    records, _skipped = labelled_records(args.data, snapshot, ReadStats())
    if not records:
        print("cascade: no labelled records with text", file=sys.stderr)
        return 1
    options = TrainOptions(
        seed=args.seed,
        folds=args.folds,
        group_by=args.group_by,
        target_share=args.target_share,
        threshold=args.threshold,
        bits=args.bits,
        c=args.c,
        solver=args.solver,
    )
    try:
        trained = train(records, snapshot.tier_names, options)
    except TrainError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        return 1
    data = artifact_bytes(trained)
    digest = hashlib.sha256(data).hexdigest()
    found = figures(
        trained,
        records,
        snapshot,
        version,
        cost_model(snapshot, args),
        with_learning_curve=not args.no_learning_curve,
    )
    seconds = time.perf_counter() - started
    summary = (
        f"{len(records):,} labelled records; artifact {args.output} ({len(data):,} bytes, "
        f"sha256 {digest}); {seconds:.1f} s."
    )
    report = blocks(found, trained, source_label(args.data), summary)
    if args.json:
        print_json({"artifact": str(args.output), "sha256": digest, **figures_json(found)})
    else:
        sys.stdout.write(render_text(report))
    refused = args.require_better and not (found.beats_rules and found.beats_length)
    if refused:
        print(
            "cascade: the scorer does not beat the rules and length: not written", file=sys.stderr
        )
        return 3
    write_atomically(args.output, data.decode("utf-8"))
    for path in write_reports(args.report or [], report, "cascade train"):
        print(f"wrote {path}", file=sys.stderr)
    print(
        f"wrote {args.output}; add to a classifier version's rules:\n"
        f"  - {{name: scorer, kind: scorer, model: {args.output}, sha256: '{digest}'}}",
        file=sys.stderr,
    )
    return 0
