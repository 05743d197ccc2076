"""`cascade judge PAIRS... -o LABELS`: label mirrored pairs with a blind LLM judge.

Each pair (one request, the cheap tier's answer, the costly tier's answer) goes to an
OpenAI-compatible judge, blind to the tiers, in an order chosen by `--seed`; `--swap-share` of
the pairs are asked again the other way round to measure position bias. Labelled records (the
format `cascade eval` and `cascade train` read: `label` = the cheapest sufficient tier,
`evidence` with the judge's scores and rationale) are appended to LABELS; a re-run skips pairs
already labelled there. Pairs that could not be judged go to the unjudged file with the reason.

The API key comes from the environment variable named by `--api-key-env` (default
CASCADE_JUDGE_API_KEY, else OPENAI_API_KEY); it is never printed.

Exit status: 0 done (unjudged pairs are reported, not an error); 1 pairs were sent to the
judge and none was judged; 2 bad usage or config; 3 stopped by the judge endpoint refusing every
request (401, 403, 404); 4 the labels were written but the metrics push failed.

Verdict metrics (`--metrics-file` for a textfile collector, `--push-gateway` for a Prometheus
Pushgateway) are counted over the whole LABELS file: docs/quality-loop.md, "Live quality".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from extproc.cli.config import add_config_argument
from extproc.cli.tuning import _fraction

DEFAULT_KEY_ENVS = ("CASCADE_JUDGE_API_KEY", "OPENAI_API_KEY")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return value


def _price(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        price = (float(low), float(high if sep else low))
    except ValueError as exc:
        message = f"expected IN:OUT per million tokens, got {text!r}"
        raise argparse.ArgumentTypeError(message) from exc
    if min(price) < 0:
        raise argparse.ArgumentTypeError("prices must not be negative")
    return price


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "judge",
        help="Label mirrored pairs with a blind LLM judge (labels for eval and train).",
        description=__doc__,
    )
    parser.add_argument(
        "pairs",
        nargs="+",
        metavar="PAIRS",
        help="Pair JSONL files (- = stdin), or a Redis sink: redis://HOST:PORT/DB?stream=NAME.",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="LABELS",
        help="Labelled JSONL, appended (a re-run resumes).",
    )
    parser.add_argument(
        "--unjudged",
        type=Path,
        metavar="FILE",
        help="Pairs not judged, with reasons (default: LABELS.unjudged.jsonl).",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--judge-url",
        metavar="URL",
        help="OpenAI-compatible base URL (default: the top tier's first backend).",
    )
    parser.add_argument(
        "--judge-model", metavar="MODEL", help="Judge model (default: the top tier's model)."
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="Environment variable holding the API key "
        "(default: CASCADE_JUDGE_API_KEY, else OPENAI_API_KEY).",
    )
    parser.add_argument(
        "--rubric",
        type=Path,
        metavar="FILE",
        help="Rubric template with {request}, {answer_a}, {answer_b} "
        "(default: the shipped coding-assistant rubric).",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the answer order and the swap sample."
    )
    parser.add_argument(
        "--swap-share",
        type=_fraction,
        default=0.2,
        metavar="X",
        help="Share of pairs also judged in the other order.",
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=4, help="Pairs judged at a time."
    )
    parser.add_argument("--retries", type=int, default=4, help="Retries on 429/5xx.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds per request.")
    parser.add_argument(
        "--max-backoff",
        type=float,
        default=30.0,
        help="Longest back-off between retries, in seconds.",
    )
    parser.add_argument(
        "--max-pairs", type=_positive_int, metavar="N", help="Judge at most N pairs (default: all)."
    )
    parser.add_argument(
        "--max-cost",
        type=float,
        metavar="X",
        help="Stop after spending X dollars (default: no limit).",
    )
    parser.add_argument(
        "--judge-price",
        type=_price,
        metavar="IN:OUT",
        help="Judge prices per million tokens (default: the tier whose model judges).",
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=12_000,
        help="Characters shown of the request and of each answer.",
    )
    parser.add_argument(
        "--max-tokens", type=_positive_int, default=400, help="The max_tokens of a verdict."
    )
    parser.add_argument(
        "--summary",
        type=Path,
        metavar="FILE",
        help="Also write the summary as JSON to FILE (default: not written).",
    )
    parser.add_argument(
        "--metrics-file",
        type=Path,
        metavar="FILE",
        help="Write verdict metrics in Prometheus text format for a textfile collector "
        "(default: not written).",
    )
    parser.add_argument(
        "--push-gateway",
        metavar="URL",
        help="PUT the verdict metrics to a Prometheus Pushgateway (default: not pushed).",
    )
    parser.add_argument("--push-job", default="cascade_judge", help="Pushgateway job label.")
    parser.add_argument(
        "--max-segments",
        type=_positive_int,
        default=20,
        help="Distinct user segments in the metrics.",
    )
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    parser.add_argument("--quiet", action="store_true", help="No progress line.")
    parser.set_defaults(func=run)


def _api_key(name: str | None) -> str:
    for env in (name,) if name else DEFAULT_KEY_ENVS:
        value = os.environ.get(env, "")
        if value:
            return value
    return ""


def run(args: argparse.Namespace) -> int:
    from extproc.cli.config import load_config_or_exit
    from extproc.cli.judge_report import (
        export_metrics,
        open_inputs,
        print_summary,
        settings_or_exit,
    )
    from extproc.tuning.judge_client import Endpoint, JudgeClient, RetryPolicy
    from extproc.tuning.judge_pairs import PairStats, judged_ids
    from extproc.tuning.judge_run import JudgeRun, ProgressLine

    snapshot = load_config_or_exit(args.config)
    settings = settings_or_exit(args, snapshot)
    endpoint = Endpoint(
        settings.url,
        settings.plan.judge_model,
        _api_key(args.api_key_env),
        timeout=args.timeout,
        max_tokens=args.max_tokens,
    )
    client = JudgeClient(
        endpoint,
        RetryPolicy(retries=max(args.retries, 0), max_backoff=args.max_backoff),
        seed=args.seed,
    )
    unjudged_path = args.unjudged or args.output.with_name(args.output.name + ".unjudged.jsonl")
    stats = PairStats()
    pairs, total = open_inputs(args.pairs, stats)
    progress = None if args.quiet else ProgressLine(sys.stderr, total=total)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("ab") as labelled, unjudged_path.open("wb") as unjudged:
        judging = JudgeRun(
            client,
            settings.plan,
            settings.budget,
            args.concurrency,
            judged_ids(args.output),
            labelled,
            unjudged,
            progress,
        )
        judging.summary.warnings.extend(settings.warnings)
        summary = judging.run(pairs)
    summary.malformed = stats.malformed
    if stats.malformed:
        summary.warnings.append(
            f"skipped {stats.malformed} malformed line(s) (first: {stats.first_problem})"
        )
    print_summary(summary, args, unjudged_path)
    pushed = export_metrics(args, summary)
    if summary.stopped:
        return 3
    if not pushed:
        return 4
    return 1 if summary.sent and not summary.judged else 0
