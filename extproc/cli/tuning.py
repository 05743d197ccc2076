"""`cascade eval|sample|candidates|tune`: the weekly tuning cycle (docs/tuning.md).

Tables and JSON go to stdout, progress and warnings to stderr. Exit status: 0 ok; 1 bad data
(nothing usable, labels that are not tiers); 2 bad usage or config; 3 `tune` could not meet the
SLO on the training data (nothing written unless `--force`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extproc.cli.config import add_config_argument, load_config_or_exit

if TYPE_CHECKING:
    from extproc.config.snapshot import Snapshot
    from extproc.tuning.candidates import Candidate, KeywordCheck
    from extproc.tuning.dataset import ReadStats, Record
    from extproc.tuning.metrics import CostModel


def _fraction(text: str) -> float:
    """`0.05`, `5%` or `5 %` -> 0.05."""
    value = text.strip()
    try:
        number = float(value.rstrip("% ")) / 100 if value.endswith("%") else float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a fraction like 0.05 or 5%, got {text!r}"
        ) from exc
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return number


def _band(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH like 0.60:0.70, got {text!r}")
    band = (_fraction(low), _fraction(high))
    if band[0] > band[1]:
        raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH in {text!r}")
    return band


def _langs(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _add_data(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("data", nargs="+", metavar="DATA", help=what)
    add_config_argument(parser)


def _add_costs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-tokens",
        type=float,
        default=256,
        help="output tokens per request when records carry none (default 256)",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=1000,
        help="throughput of a per_hour tier, output tokens/s at full use (default 1000)",
    )


KEYWORD_IMPACT = ("alone right", "alone wrong", "net if removed")
DATA_HELP = "labelled JSONL (.jsonl, .jsonl.gz), a decision log, or a CSV sheet; - for stdin"


def register(sub: Any) -> None:
    _register_eval(sub)
    _register_sample(sub)
    _register_candidates(sub)
    _register_tune(sub)


def _register_eval(sub: Any) -> None:
    ev = sub.add_parser(
        "eval", help="score classifier versions on labelled requests, with baselines and costs"
    )
    _add_data(ev, DATA_HELP)
    ev.add_argument(
        "--classifier",
        action="append",
        metavar="V",
        help="version to score; repeat for side by side (default: stable, and the canary)",
    )
    ev.add_argument(
        "--by",
        action="append",
        metavar="FIELD",
        help="break figures down by a record field (dotted path, e.g. evidence.domain) or by "
        "the derived 'lang' or 'length'; repeatable (default: source and lang)",
    )
    ev.add_argument(
        "--weight", metavar="FIELD", help="weight records by this field (sheets: weight)"
    )
    _add_costs(ev)
    ev.add_argument(
        "--report",
        action="append",
        type=Path,
        metavar="FILE",
        help="also write a report: .md (+ SVG files beside it), .html (SVG inline) or .txt",
    )
    ev.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ev.add_argument("--limit", type=int, metavar="N", help="read only the first N records")
    ev.set_defaults(func=run_eval)


def _register_sample(sub: Any) -> None:
    sa = sub.add_parser("sample", help="write a stratified labelling sheet (CSV); read one back")
    sa.add_argument("data", nargs="*", metavar="TRACES", help="decision log or JSONL records")
    add_config_argument(sa)
    sa.add_argument("-n", type=int, default=100, help="rows in the sheet (default 100)")
    sa.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sa.add_argument(
        "--tail", type=_fraction, default=0.3, help="share of rows for the tail (default 0.3)"
    )
    sa.add_argument(
        "--segment",
        default="source",
        metavar="FIELD",
        help="field whose rare values are oversampled (default: source; '' for none)",
    )
    sa.add_argument(
        "--classifier", metavar="V", help="version deciding records with no logged tier"
    )
    sa.add_argument(
        "--blind",
        action="store_true",
        help="leave the router's decision out of the sheet, so it cannot anchor the labeller",
    )
    sa.add_argument(
        "--read-sheet",
        type=Path,
        metavar="SHEET",
        help="instead: read a labelled sheet back and write labelled JSONL",
    )
    sa.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    sa.set_defaults(func=run_sample)


def _register_candidates(sub: Any) -> None:
    ca = sub.add_parser("candidates", help="keyword candidates from false negatives, per language")
    _add_data(ca, DATA_HELP)
    ca.add_argument("--classifier", metavar="V", help="version (default: the stable one)")
    ca.add_argument("--top", type=int, default=25, help="candidates to show (default 25)")
    ca.add_argument(
        "--min-count", type=int, default=3, help="false negatives a term must occur in (default 3)"
    )
    ca.add_argument(
        "--lang",
        type=_langs,
        metavar="L,L",
        help="only these scripts: latin, ko, zh, ja, other (default: all)",
    )
    ca.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ca.set_defaults(func=run_candidates)


def _register_tune(sub: Any) -> None:
    tu = sub.add_parser("tune", help="fit a new classifier version within an SLO band")
    _add_data(tu, DATA_HELP)
    tu.add_argument("--classifier", metavar="V", help="version to start from (default: stable)")
    tu.add_argument(
        "--max-misroute", type=_fraction, metavar="X", help="misroute ceiling, e.g. 0.05"
    )
    tu.add_argument(
        "--weak-share", type=_band, metavar="LO:HI", help="weak-share band, e.g. 0.60:0.70"
    )
    tu.add_argument(
        "--holdout", type=_fraction, default=0.3, help="held-out share (default 0.3; 0 = none)"
    )
    tu.add_argument("--cv", type=int, default=0, metavar="K", help="K-fold cross-validation")
    tu.add_argument("--seed", type=int, default=0, help="random seed of the split (default 0)")
    tu.add_argument("--version", metavar="NAME", help="name of the new version (default: v<n+1>)")
    tu.add_argument(
        "-o", "--out", type=Path, help="config file to write (default: the --config file)"
    )
    tu.add_argument(
        "--report", type=Path, help="review report, .md or .html (default: beside --out)"
    )
    tu.add_argument("--by", action="append", metavar="FIELD", help="breakdown in the review")
    tu.add_argument(
        "--min-count", type=int, default=5, help="target records a new keyword needs (default 5)"
    )
    tu.add_argument(
        "--min-gain", type=int, default=3, help="misroutes a new keyword must fix (default 3)"
    )
    tu.add_argument("--max-new-keywords", type=int, default=30, help="default 30")
    tu.add_argument(
        "--scopes", default="all,user,last_user", help="text scopes to try (default: all three)"
    )
    tu.add_argument("--lang", type=_langs, metavar="L,L", help="scripts to mine keywords from")
    tu.add_argument("--no-text", action="store_true", help="no request text in the review")
    tu.add_argument("--force", action="store_true", help="write even when the SLO is not met")
    tu.add_argument("--dry-run", action="store_true", help="write nothing; print the summary")
    tu.add_argument("--json", action="store_true", help="print a JSON summary")
    _add_costs(tu)
    tu.set_defaults(func=run_tune)


# ---------------------------------------------------------------------------------------------
# shared helpers


def config_label(path: Path | None) -> str:
    return str(path) if path else "packaged default"


def source_label(paths: Sequence[str]) -> str:
    return " + ".join(Path(p).name if p != "-" else "stdin" for p in paths)


def read_all(paths: Sequence[str], stats: ReadStats) -> Iterator[Record]:
    from extproc.tuning.dataset import read_records

    for path in paths:
        try:
            yield from read_records(path, stats)
        except OSError as exc:
            print(f"cascade: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(2) from exc


def cost_model(snapshot: Snapshot, args: argparse.Namespace) -> CostModel:
    from extproc.tuning.metrics import CostModel

    prices = {tier.name: tier.price for tier in snapshot.tiers}
    return CostModel(prices, args.output_tokens, args.tokens_per_second)


def version_or_exit(snapshot: Snapshot, version: str | None) -> str:
    chosen = version or snapshot.stable
    if chosen not in snapshot.classifiers:
        known = ", ".join(snapshot.classifiers)
        print(f"cascade: unknown classifier {chosen!r}; known: {known}", file=sys.stderr)
        raise SystemExit(2)
    return chosen


def labelled_records(
    paths: Sequence[str], snapshot: Snapshot, stats: ReadStats
) -> tuple[list[Record], dict[str, int]]:
    """Records with text and a tier label; counts of what was skipped and why."""
    kept = []
    skipped = {"no text": 0, "no label": 0, "label not a tier": 0}
    tiers = set(snapshot.tier_names)
    for record in read_all(paths, stats):
        if record.chat is None:
            skipped["no text"] += 1
        elif record.label is None:
            skipped["no label"] += 1
        elif record.label not in tiers:
            skipped["label not a tier"] += 1
        else:
            kept.append(record)
    if stats.summary():
        print(f"cascade: {stats.summary()}", file=sys.stderr)
    if any(skipped.values()):
        parts = ", ".join(f"{n:,} {why}" for why, n in skipped.items() if n)
        print(f"cascade: skipped {parts}", file=sys.stderr)
    return kept, skipped


def write_reports(paths: Sequence[Path], blocks: Sequence[Any], title: str) -> list[Path]:
    from extproc.tuning.report import write_report

    written: list[Path] = []
    for path in paths:
        try:
            written += write_report(path, blocks, title)
        except ValueError as exc:
            print(f"cascade: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        except OSError as exc:
            print(f"cascade: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(2) from exc
    return written


def print_json(data: object) -> None:
    import orjson

    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    sys.stdout.buffer.write(orjson.dumps(data, option=option) + b"\n")


# ---------------------------------------------------------------------------------------------
# eval


def run_eval(args: argparse.Namespace) -> int:
    from extproc.tuning.dataset import ReadStats
    from extproc.tuning.evaluate import Evaluator, evaluate
    from extproc.tuning.report import eval_blocks, eval_json, render_text

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


# ---------------------------------------------------------------------------------------------
# sample


def run_sample(args: argparse.Namespace) -> int:
    from extproc.tuning.dataset import ReadStats
    from extproc.tuning.sample import SampleOptions, feedback_suspects, sample, sheet_text

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
    from extproc.tuning.dataset import ReadStats
    from extproc.tuning.sample import jsonl_lines, read_sheet

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


# ---------------------------------------------------------------------------------------------
# candidates


def run_candidates(args: argparse.Namespace) -> int:
    from extproc.tuning.candidates import Example, find_candidates
    from extproc.tuning.dataset import ReadStats
    from extproc.tuning.report import Heading, Para, Table, render_text

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
    blocks: list[Any] = [
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
    from extproc.tuning.report import pct

    counts = [str(c.fixes), str(c.strong), str(c.weak)]
    return [c.term, c.lang, *counts, pct(c.precision), str(c.new_fp), f"{c.net:+d}"]


def _keyword_row(k: KeywordCheck) -> list[str]:
    from extproc.tuning.report import pct

    counts = [str(k.strong), str(k.weak), pct(k.precision), str(k.sole_strong), str(k.sole_weak)]
    return [k.keyword, *counts, f"{k.net_if_removed:+d}"]


def _fields(item: object) -> dict[str, Any]:
    import dataclasses

    assert dataclasses.is_dataclass(item) and not isinstance(item, type)
    return dataclasses.asdict(item)


# ---------------------------------------------------------------------------------------------
# tune


def run_tune(args: argparse.Namespace) -> int:
    from extproc.cli.tune import run_tune as run

    return run(args)
