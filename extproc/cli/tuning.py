"""`cascade eval|sample|candidates|tune`: the weekly tuning cycle (docs/tuning.md).

Tables and JSON go to stdout, progress and warnings to stderr. Exit status: 0 ok; 1 bad data
(nothing usable, labels that are not tiers); 2 bad usage or config; 3 `tune` could not meet the
SLO on the training data (nothing written unless `--force`); 4 `tune`'s version loses out of
fold (to always-weak, or with `--objective pgr` to random at its share; nothing written unless
`--force`).

The subcommands run in `extproc.cli.evaluate`, `sample`, `candidates` and `tune` (helpers they
share: `tuning_common`); this module only registers their arguments, so the tuning modules are
imported when one of these commands runs, not at every start of `cascade`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from extproc.cli.config import add_config_argument


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


def _quality(text: str) -> Any:
    from extproc.tuning.quality import parse_quality_spec

    try:
        return parse_quality_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_quality(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quality-field",
        type=_quality,
        metavar="SPEC",
        help="Where per-tier quality is: TIER=FIELD,... (weak/strong name the cheapest/top "
        "tier; FIELD under evidence or a dotted path), or a pattern like evidence.{tier}_score; "
        "booleans or graded numbers (default: evidence.<tier>_correct).",
    )


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
        help="Output tokens per request when records carry none (default: 256).",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=1000,
        help="Throughput of a per_hour tier, output tokens/s at full use (default: 1000).",
    )


DATA_HELP = "Labelled JSONL (.jsonl, .jsonl.gz), a decision log, or a CSV sheet; - for stdin."


def register(sub: Any) -> None:
    _register_eval(sub)
    _register_sample(sub)
    _register_candidates(sub)
    _register_tune(sub)


def _register_eval(sub: Any) -> None:
    ev = sub.add_parser(
        "eval", help="Score classifier versions on labelled requests, with baselines and costs."
    )
    _add_data(ev, DATA_HELP)
    ev.add_argument(
        "--classifier",
        action="append",
        metavar="V",
        help="Version to score; repeat for side by side (default: stable, and the canary).",
    )
    ev.add_argument(
        "--by",
        action="append",
        metavar="FIELD",
        help="Break figures down by a record field (dotted path, e.g. evidence.domain) or by "
        "the derived 'lang' or 'length'; repeatable (default: source and lang).",
    )
    ev.add_argument(
        "--weight",
        metavar="FIELD",
        help="Weight records by this field (sheets: weight; default: none, every record 1).",
    )
    _add_quality(ev)
    ev.add_argument(
        "--max-misroute",
        type=_fraction,
        metavar="X",
        help="An SLO to check: misroute ceiling (with --weak-share: is it reachable at all?; "
        "default: none).",
    )
    ev.add_argument(
        "--weak-share",
        type=_band,
        metavar="LO:HI",
        help="An SLO to check: weak-share band (default: none).",
    )
    _add_costs(ev)
    ev.add_argument(
        "--report",
        action="append",
        type=Path,
        metavar="FILE",
        help="Also write a report: .md (+ SVG files beside it), .html (SVG inline) or .txt; "
        "repeatable (default: none).",
    )
    ev.add_argument("--json", action="store_true", help="Print JSON instead of the table.")
    ev.add_argument(
        "--limit", type=int, metavar="N", help="Read only the first N records (default: all)."
    )
    ev.set_defaults(func=_run_eval)


def _register_sample(sub: Any) -> None:
    sa = sub.add_parser("sample", help="Write a stratified labelling sheet (CSV); read one back.")
    sa.add_argument(
        "data",
        nargs="*",
        metavar="TRACES",
        help="Decision log or JSONL records (default: none, with --read-sheet).",
    )
    add_config_argument(sa)
    sa.add_argument("-n", type=int, default=100, help="Rows in the sheet (default: 100).")
    sa.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    sa.add_argument(
        "--tail", type=_fraction, default=0.3, help="Share of rows for the tail (default: 0.3)."
    )
    sa.add_argument(
        "--segment",
        default="source",
        metavar="FIELD",
        help="Field whose rare values are oversampled (default: source; '' for none).",
    )
    sa.add_argument(
        "--classifier",
        metavar="V",
        help="Version deciding records with no logged tier (default: the stable one).",
    )
    sa.add_argument(
        "--blind",
        action="store_true",
        help="Leave the router's decision out of the sheet, so it cannot anchor the labeller.",
    )
    sa.add_argument(
        "--read-sheet",
        type=Path,
        metavar="SHEET",
        help="Instead: read a labelled sheet back and write labelled JSONL (default: none).",
    )
    sa.add_argument("-o", "--output", type=Path, help="Output file (default: stdout).")
    sa.set_defaults(func=_run_sample)


def _register_candidates(sub: Any) -> None:
    ca = sub.add_parser("candidates", help="Keyword candidates from false negatives, per language.")
    _add_data(ca, DATA_HELP)
    ca.add_argument("--classifier", metavar="V", help="Version (default: the stable one).")
    ca.add_argument("--top", type=int, default=25, help="Candidates to show (default: 25).")
    ca.add_argument(
        "--min-count",
        type=int,
        default=3,
        help="False negatives a term must occur in (default: 3).",
    )
    ca.add_argument(
        "--lang",
        type=_langs,
        metavar="L,L",
        help="Only these scripts: latin, ko, zh, ja, other (default: all).",
    )
    ca.add_argument(
        "--folds",
        type=int,
        default=5,
        metavar="K",
        help="Folds for each term's out-of-fold gain (default: 5; 0 = none).",
    )
    ca.add_argument("--seed", type=int, default=0, help="Random seed of the folds (default: 0).")
    ca.add_argument(
        "--group-by",
        metavar="FIELD",
        help="Keep records with the same value in one fold (default: none, records split alone).",
    )
    ca.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    ca.set_defaults(func=_run_candidates)


def _register_tune(sub: Any) -> None:
    tu = sub.add_parser("tune", help="Fit a new classifier version within an SLO band.")
    _add_data(tu, DATA_HELP)
    tu.add_argument("--classifier", metavar="V", help="Version to start from (default: stable).")
    tu.add_argument(
        "--max-misroute",
        type=_fraction,
        metavar="X",
        help="Misroute ceiling, e.g. 0.05 (default: none).",
    )
    tu.add_argument(
        "--weak-share",
        type=_band,
        metavar="LO:HI",
        help="Weak-share band, e.g. 0.60:0.70 (default: none).",
    )
    tu.add_argument(
        "--objective",
        choices=("misroute", "pgr"),
        default="misroute",
        help="What to optimise (default: misroute): misroute, the fewest misroutes within the SLO; "
        "pgr, the most quality (PGR) "
        "within the SLO, e.g. with --max-strong-share.",
    )
    tu.add_argument(
        "--max-strong-share",
        type=_fraction,
        metavar="X",
        help="Budget: at most this share of requests to the strong tier, e.g. 0.2 (default: none).",
    )
    _add_quality(tu)
    tu.add_argument(
        "--holdout", type=_fraction, default=0.3, help="Held-out share (default: 0.3; 0 = none)."
    )
    tu.add_argument("--cv", type=int, default=0, metavar="K", help="K-fold cross-validation.")
    tu.add_argument(
        "--group-by",
        metavar="FIELD",
        help="Keep records with the same value of this field (e.g. conversation_id) in one fold "
        "(default: none, records split alone).",
    )
    tu.add_argument("--seed", type=int, default=0, help="Random seed of the split (default: 0).")
    tu.add_argument("--version", metavar="NAME", help="Name of the new version (default: v<n+1>).")
    tu.add_argument(
        "-o", "--out", type=Path, help="Config file to write (default: the --config file)."
    )
    tu.add_argument(
        "--report", type=Path, help="Review report, .md or .html (default: beside --out)."
    )
    tu.add_argument(
        "--by",
        action="append",
        metavar="FIELD",
        help="Breakdown in the review; repeatable (default: none).",
    )
    tu.add_argument(
        "--min-count", type=int, default=5, help="Target records a new keyword needs (default: 5)."
    )
    tu.add_argument(
        "--min-gain", type=int, default=3, help="Misroutes a new keyword must fix (default: 3)."
    )
    tu.add_argument("--max-new-keywords", type=int, default=30, help="New keywords at most.")
    tu.add_argument(
        "--scopes", default="all,user,last_user", help="Text scopes to try (default: all three)."
    )
    tu.add_argument(
        "--lang", type=_langs, metavar="L,L", help="Scripts to mine keywords from (default: all)."
    )
    tu.add_argument("--no-text", action="store_true", help="No request text in the review.")
    tu.add_argument(
        "--force",
        action="store_true",
        help="Write even when the SLO is not met or the version loses to always-weak out of fold.",
    )
    tu.add_argument("--dry-run", action="store_true", help="Write nothing; print the summary.")
    tu.add_argument("--json", action="store_true", help="Print a JSON summary.")
    _add_costs(tu)
    tu.set_defaults(func=_run_tune)


# ---------------------------------------------------------------------------------------------
# the commands, imported when run


def _run_eval(args: argparse.Namespace) -> int:
    from extproc.cli.evaluate import run_eval

    return run_eval(args)


def _run_sample(args: argparse.Namespace) -> int:
    from extproc.cli.sample import run_sample

    return run_sample(args)


def _run_candidates(args: argparse.Namespace) -> int:
    from extproc.cli.candidates import run_candidates

    return run_candidates(args)


def _run_tune(args: argparse.Namespace) -> int:
    from extproc.cli.tune import run_tune

    return run_tune(args)
