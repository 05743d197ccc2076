"""`cascade candidates` (registered by `extproc.cli.tuning`): keyword candidates mined from
false negatives, per language, and what each current keyword is worth."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from extproc.cli.config import load_config_or_exit
from extproc.cli.tuning_common import labelled_records, print_json, source_label, version_or_exit
from extproc.tuning.candidates import Candidate, Example, KeywordCheck, find_candidates
from extproc.tuning.dataset import ReadStats
from extproc.tuning.document import Block, Heading, Para, Table, render_text
from extproc.tuning.report import pct

KEYWORD_IMPACT = ("alone right", "alone wrong", "net if removed")


def run_candidates(args: argparse.Namespace) -> int:
    snapshot = load_config_or_exit(args.config)
    version = version_or_exit(snapshot, args.classifier)
    records, _skipped = labelled_records(args.data, snapshot, ReadStats())
    if not records:
        print("cascade: no labelled record with text", file=sys.stderr)
        return 1
    target = snapshot.tier_names[-1]
    examples = [Example(r.chat, r.label == target) for r in records if r.chat is not None]
    result = find_candidates(snapshot, version, examples, min_count=args.min_count, langs=args.lang)
    shown = result.candidates[: args.top]
    if args.json:
        print_json(
            {
                "version": result.version,
                "labelled": result.labelled,
                "positives": result.positives,
                "false_negatives": result.false_negatives,
                "candidates": [
                    {**_fields(c), "precision": c.precision, "net": c.net} for c in shown
                ],
                "keywords": [
                    {**_fields(k), "precision": k.precision, "net_if_removed": k.net_if_removed}
                    for k in result.keywords
                ],
            }
        )
        return 0
    blocks: list[Block] = [
        Heading(f"Keyword candidates for {version}: {source_label(args.data)}", 1),
        Para(
            f"{result.labelled:,} labelled records, {result.positives:,} {result.target}; "
            f"{result.false_negatives:,} false negatives ({result.target} sent to "
            f"{result.default}). fixes: false negatives containing the term; new FP: "
            f"{result.default}-labelled records it would send up; net: misroutes removed."
        ),
    ]
    if shown:
        headers = ["term", "lang", "fixes", result.target, result.default, "precision", "new FP"]
        blocks.append(Table([*headers, "net"], [_candidate_row(c) for c in shown]))
    else:
        blocks.append(
            Para(
                f"No candidate{' in ' + ', '.join(sorted(args.lang)) if args.lang else ''} "
                f"occurs in {args.min_count} or more false negatives (--min-count)."
            )
        )
    if result.keywords:
        blocks += [
            Heading(f"Current keywords of {version} (what removing each would change)"),
            Table(
                ["keyword", result.target, result.default, "precision", *KEYWORD_IMPACT],
                [_keyword_row(k) for k in result.keywords if k.strong or k.weak],
            ),
            Para(
                f"{sum(1 for k in result.keywords if not k.strong and not k.weak)} keywords never "
                "occur in this data (not shown)."
            ),
        ]
    sys.stdout.write(render_text(blocks))
    return 0


def _candidate_row(c: Candidate) -> list[str]:
    counts = [str(c.fixes), str(c.strong), str(c.weak)]
    return [c.term, c.lang, *counts, pct(c.precision), str(c.new_fp), f"{c.net:+d}"]


def _keyword_row(k: KeywordCheck) -> list[str]:
    counts = [str(k.strong), str(k.weak), pct(k.precision), str(k.sole_strong), str(k.sole_weak)]
    return [k.keyword, *counts, f"{k.net_if_removed:+d}"]


def _fields(item: object) -> dict[str, Any]:
    assert dataclasses.is_dataclass(item) and not isinstance(item, type)
    return dataclasses.asdict(item)
