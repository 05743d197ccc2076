"""`cascade eval` (registered by `extproc.cli.tuning`): score versions on labelled requests."""

from __future__ import annotations

import argparse
import sys
from itertools import islice

from extproc.cli.config import load_config_or_exit
from extproc.cli.tuning_common import (
    config_label,
    cost_model,
    print_json,
    quality_spec,
    read_all,
    source_label,
    version_or_exit,
    write_reports,
)
from extproc.tuning.dataset import ReadStats
from extproc.tuning.document import render_text
from extproc.tuning.evaluate import Evaluator, evaluate
from extproc.tuning.report import eval_blocks, eval_json


def run_eval(args: argparse.Namespace) -> int:
    snapshot = load_config_or_exit(args.config)
    versions = args.classifier or [snapshot.stable] + (
        [snapshot.canary.version] if snapshot.canary else []
    )
    for version in versions:
        version_or_exit(snapshot, version)
    stats = ReadStats()
    evaluator = Evaluator(
        snapshot,
        list(dict.fromkeys(versions)),
        cost_model(snapshot, args),
        by=args.by if args.by is not None else ["source", "lang"],
        weight_field=args.weight,
        config_label=config_label(args.config),
        quality=quality_spec(args),
        max_misroute=args.max_misroute,
        weak_share=args.weak_share,
    )
    records = read_all(args.data, stats)
    if args.limit is not None:
        records = islice(records, args.limit)
    result = evaluate(records, evaluator, source_label(args.data), stats)
    if args.by is None:  # the defaults are only shown when they say something
        result.breakdowns = {f: g for f, g in result.breakdowns.items() if len(g) > 1}
    blocks = eval_blocks(result)
    if args.json:
        print_json(eval_json(result))
    else:
        sys.stdout.write(render_text(blocks))
    sys.stdout.flush()
    for path in write_reports(args.report or [], blocks, f"cascade eval: {result.source}"):
        print(f"wrote {path}", file=sys.stderr)
    return 0 if result.predictors else 1
