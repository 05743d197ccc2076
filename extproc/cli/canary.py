"""`cascade canary`: step the classifier canary 10 -> 50 -> 100 % with automatic rollback."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from extproc.cli.config import add_config_argument, default_config_path


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "canary",
        help="Roll the canary classifier out step by step; roll back on a Prometheus trigger.",
        description=(
            "Steps canary.weight through canary.rollout.steps on a schedule, reading the "
            "canary version's health from Prometheus, and sets it to 0 at once when a trigger "
            "holds for its window. Rewrites the config file atomically (the servers reload "
            "it). Exit 0: complete; 1: rolled back; 2: config or usage error."
        ),
    )
    add_config_argument(parser)
    parser.add_argument(
        "--prometheus", help="Override canary.rollout.prometheus (base URL; default: the config's)."
    )
    parser.add_argument(
        "--exec",
        dest="exec_command",
        metavar="CMD",
        help="Shell command run after every write (env CASCADE_CONFIG_FILE, "
        "CASCADE_CANARY_WEIGHT), e.g. 'kubectl apply -k k8s/base' (default: none).",
    )
    parser.add_argument(
        "--promote",
        action="store_true",
        help="When complete, make the canary the stable classifier (old stable: 0%% canary).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Log what would change; never write the file."
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="Print the figures of one check and exit (3 when Prometheus did not answer).",
    )
    parser.add_argument(
        "--max-checks",
        type=int,
        default=None,
        help="Give up after N checks (exit 3; default: no limit).",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="Least severe log level written.",
    )
    parser.set_defaults(func=run_canary)


def run_canary(args: argparse.Namespace) -> int:
    from extproc.core.errors import ConfigError
    from extproc.rollout.controller import RolloutController, describe_once
    from extproc.rollout.prometheus import Prometheus
    from extproc.rollout.target import ConfigFileTarget

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    path: Path = args.config or default_config_path()
    target = ConfigFileTarget(path, exec_command=args.exec_command, dry_run=args.dry_run)
    try:
        snapshot = target.snapshot()
    except (ConfigError, OSError) as exc:
        print(f"cascade canary: {exc}", file=sys.stderr)
        return 2
    if snapshot.canary is None:
        print(f"cascade canary: {path} has no `canary:` section", file=sys.stderr)
        return 2
    policy = snapshot.canary.rollout
    if args.prometheus:
        policy = dataclasses.replace(policy, prometheus=args.prometheus.rstrip("/"))
    controller = RolloutController(
        policy, snapshot.canary.version, target, Prometheus(policy.prometheus)
    )
    if args.once:
        lines, complete = describe_once(controller, snapshot.canary.weight)
        for line in lines:
            print(line)
        if not complete:
            print("cascade canary: Prometheus did not answer every query", file=sys.stderr)
            return 3
        return 0
    try:
        return controller.run(promote=args.promote, max_checks=args.max_checks)
    except TimeoutError as exc:
        print(f"cascade canary: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, ValueError, RuntimeError) as exc:
        print(f"cascade canary: {exc}", file=sys.stderr)
        return 2
