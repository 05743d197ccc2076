"""`cascade classify` and `cascade check-config`: the classification core from the shell."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, load_snapshot
from extproc.core.chat import parse_chat
from extproc.core.classify import classify
from extproc.core.errors import ChatParseError, ConfigError

CONFIG_ENV = "CASCADE_CONFIG"


def default_config_path() -> Path:
    """`$CASCADE_CONFIG` when set, else the packaged default (v7)."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"Cascade config file (default: ${CONFIG_ENV}, else the packaged v7 config).",
    )


def load_config_or_exit(path: Path | None) -> Snapshot:
    try:
        return load_snapshot(path or default_config_path())
    except ConfigError as exc:
        for error in getattr(exc, "errors", (exc,)):
            print(f"cascade: {error}", file=sys.stderr)
        raise SystemExit(2) from exc


def register(sub: Any) -> None:
    classify_parser = sub.add_parser(
        "classify", help="Print the routing decision for a chat-completions body."
    )
    add_config_argument(classify_parser)
    classify_parser.add_argument(
        "--classifier", help="Classifier version (default: the stable one)."
    )
    classify_parser.add_argument(
        "--explain", action="store_true", help="Print one human-readable line instead of JSON."
    )
    classify_parser.add_argument(
        "file", nargs="?", default="-", help="JSON body file, or - for stdin."
    )
    classify_parser.set_defaults(func=run_classify)

    check_parser = sub.add_parser(
        "check-config",
        help="Validate config files: every error and warning, each with its field path.",
        description=(
            "Validate config files. Every error is listed with its field path; semantic "
            "warnings (rules that never match or are shadowed, redundant keywords, tiers "
            "nothing routes to, scorer artifacts that do not fit) are printed too. Exit 1 on "
            "errors, 0 with only warnings unless --strict is given."
        ),
    )
    check_parser.add_argument("files", nargs="+", type=Path, help="Config files to check.")
    check_parser.add_argument(
        "--strict",
        action="store_true",
        help="Exit 1 when there are warnings too (default: off: warnings alone exit 0).",
    )
    check_parser.set_defaults(func=run_check_config)


def run_classify(args: argparse.Namespace) -> int:
    snapshot = load_config_or_exit(args.config)
    version = args.classifier or snapshot.stable
    if version not in snapshot.classifiers:
        known = ", ".join(snapshot.classifiers)
        print(f"cascade: unknown classifier {version!r}; known: {known}", file=sys.stderr)
        return 2
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    chat = parse_chat(body, snapshot.server.max_body_bytes)
    if isinstance(chat, ChatParseError):
        error = {
            "error": {"message": str(chat), "type": "invalid_request_error", "code": chat.kind}
        }
        sys.stdout.buffer.write(orjson.dumps(error) + b"\n")
        return 1
    decision = classify(chat, snapshot.classifiers[version])
    if args.explain:
        keywords = f" keywords={','.join(decision.keywords)}" if decision.keywords else ""
        print(
            f"{decision.tier}  (classifier {decision.classifier}, rule {decision.rule}: "
            f"{decision.reason}; {decision.chars} chars, {decision.bytes} bytes, "
            f"{decision.messages} messages{keywords})"
        )
    else:
        sys.stdout.buffer.write(
            orjson.dumps(decision.as_dict(), option=orjson.OPT_INDENT_2) + b"\n"
        )
    return 0


def run_check_config(args: argparse.Namespace) -> int:
    from extproc.config.lint import lint

    status = 0
    for path in args.files:
        try:
            snapshot = load_snapshot(path)
        except ConfigError as exc:
            errors = getattr(exc, "errors", (exc,))
            for error in errors:
                print(f"error: {error}", file=sys.stderr)
            print(f"{path}: {len(errors)} error(s)", file=sys.stderr)
            status = 1
            continue
        findings = lint(snapshot)
        for finding in findings:
            print(f"warning: {path}: {finding.path}: {finding.message}", file=sys.stderr)
        if findings and args.strict:
            status = 1
        versions = ", ".join(f"{v} ({len(c.rules)} rules)" for v, c in snapshot.classifiers.items())
        warned = f"; {len(findings)} warning(s)" if findings else ""
        print(
            f"ok: {path}: tiers {' < '.join(snapshot.tier_names)}; classifier {snapshot.stable}"
            f"; versions {versions}{warned}"
        )
    return status
