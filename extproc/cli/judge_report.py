"""Helpers of `cascade judge`: settings from the arguments and the config, inputs, the summary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from extproc.config.snapshot import Snapshot
from extproc.core.hostport import join_host_port
from extproc.tuning.judge_client import check_url
from extproc.tuning.judge_one import Plan
from extproc.tuning.judge_pairs import Pair, PairStats, read_pairs
from extproc.tuning.judge_prompt import DEFAULT, Rubric
from extproc.tuning.judge_run import Budget, Summary


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    plan: Plan
    budget: Budget
    warnings: list[str] = field(default_factory=list)


def _fail(message: str) -> SystemExit:
    print(f"cascade judge: {message}", file=sys.stderr)
    return SystemExit(2)


def settings_or_exit(args: argparse.Namespace, snapshot: Snapshot) -> Settings:
    top, cheapest = snapshot.tiers[-1], snapshot.tiers[0]
    url = args.judge_url
    if url is None:
        if not top.backends:
            raise _fail(f"tier {top.name} has no backends in the config: give --judge-url")
        backend = top.backends[0]
        url = f"http://{join_host_port(backend.address, backend.port)}/v1"
    problem = check_url(url)
    if problem:
        raise _fail(problem)
    model = args.judge_model or top.model
    warnings = []
    if model == cheapest.model:
        warnings.append(
            f"the judge model {model!r} is the cheap tier's own model: it grades its own "
            "answers, expect the cheap tier's loss rate to be understated"
        )
    rubric = DEFAULT
    try:
        if args.rubric is not None:
            rubric = Rubric(
                args.rubric.read_text(encoding="utf-8"),
                name=str(args.rubric),
                max_chars=args.max_chars,
            )
        elif args.max_chars != DEFAULT.max_chars:
            rubric = Rubric(DEFAULT.template, max_chars=args.max_chars)
    except OSError as exc:
        raise _fail(f"cannot read {args.rubric}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    price = args.judge_price
    if price is None:
        for tier in snapshot.tiers:
            if tier.model == model and (tier.price.input_per_mtok or tier.price.output_per_mtok):
                price = (tier.price.input_per_mtok, tier.price.output_per_mtok)
                break
    if args.max_cost is not None and price is None:
        raise _fail("--max-cost needs a price: give --judge-price IN:OUT (per million tokens)")
    plan = Plan(
        rubric=rubric,
        judge_model=model,
        seed=args.seed,
        swap_share=args.swap_share,
        ranks={tier.name: tier.rank for tier in snapshot.tiers},
    )
    return Settings(url, plan, Budget(args.max_pairs, args.max_cost, price), warnings)


#: entries read per XRANGE call from a Redis Streams sink
REDIS_BATCH = 1000


def _is_redis(path: str) -> bool:
    return path.startswith(("redis://", "rediss://", "unix://"))


def redis_lines(url: str) -> Iterator[bytes]:
    """The pairs of a Redis Streams sink (`redis://host:port/db?stream=NAME`, default stream
    `cascade:pairs`), oldest first, one JSON line per entry (field `pair`)."""
    import redis

    base, _, query = url.partition("?")
    params = dict(part.partition("=")[::2] for part in query.split("&") if part)
    stream = params.pop("stream", "cascade:pairs")
    rest = "&".join(f"{k}={v}" for k, v in params.items())
    client = redis.Redis.from_url(base + (f"?{rest}" if rest else ""), socket_timeout=10)
    try:
        start = "-"
        while True:
            entries: Any = client.xrange(stream, min=start, max="+", count=REDIS_BATCH)
            for _, fields in entries or ():
                line = fields.get(b"pair", b"") if isinstance(fields, dict) else b""
                yield (line if isinstance(line, bytes) else b"") + b"\n"
            if not entries or len(entries) < REDIS_BATCH:
                return
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    finally:
        client.close()


def _count_lines(path: str) -> int | None:
    if path == "-" or _is_redis(path):
        return None
    try:
        with open(path, "rb") as stream:
            return sum(1 for line in stream if line.strip())
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from exc


def open_inputs(paths: Sequence[str], stats: PairStats) -> tuple[Iterator[Pair], int | None]:
    """The pairs of every input, lazily, and their number of lines when known."""
    counts = [_count_lines(p) for p in paths]
    total = None if None in counts else sum(c or 0 for c in counts)

    def pairs() -> Iterator[Pair]:
        for path in paths:
            if _is_redis(path):
                yield from read_pairs(redis_lines(path), stats)
                continue
            stream: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
            try:
                yield from read_pairs(stream, stats)
            finally:
                if path != "-":
                    stream.close()

    return pairs(), total


def print_summary(summary: Summary, args: argparse.Namespace, unjudged: Path) -> None:
    data = summary.as_json()
    if args.summary is not None:
        args.summary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    for warning in summary.warnings:
        print(f"cascade judge: warning: {warning}", file=sys.stderr)
    if summary.stopped:
        print(f"cascade judge: {summary.stopped}", file=sys.stderr)
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    cheap, swap, judge = data["cheap_tier"], data["swap"], data["judge"]
    lines = [
        f"pairs read        {summary.pairs} ({summary.malformed} malformed lines skipped, "
        f"{summary.duplicates} duplicate ids, {summary.already_judged} judged before)",
        f"judged            {summary.judged}",
        f"unjudged          {summary.unjudged.total()}"
        + (f" ({_kinds(data['unjudged'])}) -> {unjudged}" if summary.unjudged else ""),
        f"cheap tier        win {cheap['win']} · tie {cheap['tie']} · loss {cheap['loss']}"
        f" (loss rate {_pct(cheap['loss_rate'])})",
    ]
    for lang, row in data["by_lang"].items():
        lines.append(
            f"  {lang:<15} win {row['win']} · tie {row['tie']} · loss {row['loss']}"
            f" (loss rate {_pct(row['loss_rate'])})"
        )
    lines += [
        f"labels            {_kinds(data['labels']) or '-'}",
        f"swap check        {swap['judged_both_ways']} judged both ways, agreement "
        f"{_pct(swap['agreement'])}; the answer shown first won {_pct(swap['first_shown_won'])}",
        f"judge             {judge['model']}: {judge['requests']} requests "
        f"({judge['retries']} retries), {judge['tokens_in']} + {judge['tokens_out']} tokens, "
        f"cost {'unknown (no price)' if judge['cost'] is None else format(judge['cost'], '.4f')}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _labelled(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as stream:
        for line in stream:
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict):
                yield data


def export_metrics(args: argparse.Namespace, summary: Summary) -> bool:
    """Write `--metrics-file` and PUT to `--push-gateway`; False when the push failed."""
    if args.metrics_file is None and args.push_gateway is None:
        return True
    import time
    import urllib.request

    from extproc.tuning.judge_metrics import VerdictCounts, exposition

    counts = VerdictCounts(args.max_segments).add_all(_labelled(args.output))
    text = exposition(
        counts,
        unjudged=dict(summary.unjudged),
        cost=summary.cost if summary.priced else None,
        finished=time.time(),
    ).encode()
    if args.metrics_file is not None:
        temporary = args.metrics_file.with_name(args.metrics_file.name + ".tmp")
        temporary.write_bytes(text)
        temporary.replace(args.metrics_file)  # a textfile collector never reads half a file
    if args.push_gateway is None:
        return True
    url = f"{args.push_gateway.rstrip('/')}/metrics/job/{args.push_job}"
    request = urllib.request.Request(
        url, data=text, method="PUT", headers={"Content-Type": "text/plain; version=0.0.4"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except OSError as exc:
        print(f"cascade judge: warning: push to {url} failed: {exc}", file=sys.stderr)
        return False
    return True
