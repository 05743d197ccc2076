"""Helpers the `cascade eval|sample|candidates|tune` commands share: reading data, labels of
sources and configs, costs, version checks, writing reports and JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from extproc.config.snapshot import Snapshot
from extproc.tuning.dataset import ReadStats, Record, read_records
from extproc.tuning.document import Block, write_report
from extproc.tuning.metrics import CostModel
from extproc.tuning.quality import DEFAULT_QUALITY, QualitySpec


def config_label(path: Path | None) -> str:
    return str(path) if path else "packaged default"


def source_label(paths: Sequence[str]) -> str:
    return " + ".join(Path(p).name if p != "-" else "stdin" for p in paths)


def read_all(paths: Sequence[str], stats: ReadStats) -> Iterator[Record]:
    for path in paths:
        try:
            yield from read_records(path, stats)
        except OSError as exc:
            print(f"cascade: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(2) from exc


def cost_model(snapshot: Snapshot, args: argparse.Namespace) -> CostModel:
    prices = {tier.name: tier.price for tier in snapshot.tiers}
    return CostModel(prices, args.output_tokens, args.tokens_per_second)


def quality_spec(args: argparse.Namespace) -> QualitySpec:
    """Where per-tier quality is read from: `--quality-field`, else the default."""
    spec = getattr(args, "quality_field", None)
    return spec if isinstance(spec, QualitySpec) else DEFAULT_QUALITY


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


def write_reports(paths: Sequence[Path], blocks: Sequence[Block], title: str) -> list[Path]:
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
    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    sys.stdout.buffer.write(orjson.dumps(data, option=option) + b"\n")
