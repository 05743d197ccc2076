"""`cascade candidates` (registered by `extproc.cli.tuning`): keyword candidates mined from
false negatives, per language, and what each current keyword is worth."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from extproc.cli.config import load_config_or_exit
from extproc.cli.tuning_common import labelled_records, print_json, source_label, version_or_exit
from extproc.tuning.candidates import Example, KeywordCheck, find_candidates
from extproc.tuning.dataset import ReadStats
from extproc.tuning.directions import DirectedTerm, find_directions
from extproc.tuning.document import Block, Heading, Para, Table, render_text
from extproc.tuning.folds import group_key
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
    if args.folds == 1 or args.folds < 0:
        print("cascade: --folds needs at least 2 (or 0)", file=sys.stderr)
        return 2
    both = find_directions(
        snapshot,
        version,
        examples,
        keys=[group_key(r, args.group_by) for r in records if r.chat is not None],
        folds=args.folds,
        seed=args.seed,
        min_count=args.min_count,
        langs=args.lang,
    )
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
                "folds": both.folds,
                "false_positives": both.false_positives,
                "up": [{**_fields(t), "net": t.net} for t in both.up[: args.top]],
                "weak_safe": [{**_fields(t), "net": t.net} for t in both.weak[: args.top]],
            }
        )
        return 0
    blocks: list[Block] = [
        Heading(f"Keyword candidates for {version}: {source_label(args.data)}", 1),
        Para(
            f"{result.labelled:,} labelled records, {result.positives:,} {result.target}; "
            f"{result.false_negatives:,} false negatives ({result.target} sent to "
            f"{result.default}). fixes: false negatives containing the term; new FP: "
            f"{result.default}-labelled records it would send up; net: misroutes removed; oof "
            "net: the net on held-out folds, summed over the folds whose training part kept the "
            "term (how many, in brackets)."
        ),
        Heading(
            f"Terms from false negatives (to add to the keyword rule sending to {result.target})"
        ),
    ]
    oof = f"oof net ({both.folds} folds)" if both.folds else "oof net"
    if both.up:
        headers = ["term", "lang", "fixes", result.target, result.default, "new FP", "net", oof]
        blocks.append(Table(headers, [_directed_row(t) for t in both.up[: args.top]]))
    else:
        blocks.append(
            Para(
                f"No candidate{' in ' + ', '.join(sorted(args.lang)) if args.lang else ''} "
                f"occurs in {args.min_count} or more false negatives (--min-count)."
            )
        )
    blocks += [
        Heading(
            f"Weak-safe terms from false positives ({both.false_positives:,} {result.default}-"
            f"labelled requests {version} sends up)"
        ),
        Para(
            f"As a rule sending them to {result.default}, placed first: fixes = false positives "
            f"containing the term, broken = {result.target}-labelled requests sent up that "
            "contain it."
        ),
    ]
    if both.weak:
        headers = ["term", "lang", "fixes", result.target, result.default, "broken", "net", oof]
        blocks.append(Table(headers, [_directed_row(t) for t in both.weak[: args.top]]))
    else:
        blocks.append(Para(f"No term occurs in {args.min_count} or more false positives."))
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


def _directed_row(t: DirectedTerm) -> list[str]:
    counts = [str(t.fixes), str(t.strong), str(t.weak), str(t.breaks), f"{t.net:+d}"]
    oof = "—" if t.oof_net is None else f"{t.oof_net:+d} ({t.oof_folds})"
    return [t.term, t.lang, *counts, oof]


def _keyword_row(k: KeywordCheck) -> list[str]:
    counts = [str(k.strong), str(k.weak), pct(k.precision), str(k.sole_strong), str(k.sole_weak)]
    return [k.keyword, *counts, f"{k.net_if_removed:+d}"]


def _fields(item: object) -> dict[str, Any]:
    assert dataclasses.is_dataclass(item) and not isinstance(item, type)
    return dataclasses.asdict(item)
