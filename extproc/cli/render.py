"""`cascade render envoy`: the Envoy bootstrap generated from the cascade config."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from extproc.cli.config import add_config_argument, load_config_or_exit


def register(sub: Any) -> None:
    parser = sub.add_parser("render", help="generate configuration for other components")
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    envoy = targets.add_parser("envoy", help="the Envoy bootstrap YAML (routes follow the tiers)")
    add_config_argument(envoy)
    envoy.add_argument("--listen", help="override envoy.listen (host:port; port 0 = any)")
    envoy.add_argument("--admin", help="override envoy.admin (host:port)")
    envoy.add_argument(
        "--ext-proc", action="append", help="override envoy.ext_proc (repeat for several)"
    )
    envoy.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
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
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
