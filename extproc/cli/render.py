"""`cascade render envoy`: the Envoy bootstrap generated from the cascade config."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from extproc.cli.config import add_config_argument, load_config_or_exit
from extproc.config.snapshot import Snapshot


def register(sub: Any) -> None:
    parser = sub.add_parser("render", help="Generate configuration for other components.")
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    envoy = targets.add_parser("envoy", help="The Envoy bootstrap YAML (routes follow the tiers).")
    add_config_argument(envoy)
    envoy.add_argument(
        "--listen",
        help="Override envoy.listen (host:port; port 0 = any; default: the config's).",
    )
    envoy.add_argument("--admin", help="Override envoy.admin (host:port; default: the config's).")
    envoy.add_argument(
        "--ext-proc",
        action="append",
        help="Override envoy.ext_proc (repeat for several; default: the config's).",
    )
    envoy.add_argument(
        "-o", "--output", type=Path, help="Write here instead of stdout (default: stdout)."
    )
    envoy.set_defaults(func=run_render_envoy)


def run_render_envoy(args: argparse.Namespace) -> int:
    from extproc.gateway.render import render_yaml

    snapshot = load_config_or_exit(args.config)
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listen"] = args.listen
    if args.admin:
        overrides["admin"] = args.admin
    if args.ext_proc:
        overrides["ext_proc"] = tuple(args.ext_proc)
    if overrides:
        snapshot = dataclasses.replace(
            snapshot, envoy=dataclasses.replace(snapshot.envoy, **overrides)
        )
    text = render_yaml(snapshot)
    for tier in snapshot.tiers:
        if not tier.backends:
            print(
                f"cascade: warning: tier {tier.name!r} has no backends: Envoy answers 503 to "
                "every request routed to it (add tiers[].backends)",
                file=sys.stderr,
            )
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    print(render_summary(snapshot, args.output), file=sys.stderr)
    return 0


def render_summary(snapshot: Snapshot, output: Path | None) -> str:
    """One line on stderr: where the config went and what it routes."""
    from extproc.config.drift import routes_fingerprint

    tiers = ", ".join(
        f"{t.name} ({len(t.backends)} backend{'s' if len(t.backends) != 1 else ''})"
        for t in snapshot.tiers
    )
    where = str(output) if output else "stdout"
    return (
        f"cascade: wrote the Envoy bootstrap to {where}: listener {snapshot.envoy.listen}, "
        f"tiers {tiers}; routes fingerprint {routes_fingerprint(snapshot)}"
    )
