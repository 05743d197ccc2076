"""`cascade demo`: the whole gateway on loopback with a table of routed requests."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="Run Envoy + cascade + two mock backends locally and route sample requests."
    )
    parser.add_argument("--once", action="store_true", help="Print the table and exit.")
    parser.add_argument(
        "--port", type=int, default=10000, help="Envoy listener port (0 = any free port)."
    )
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from cascade_dev.demo import main

    return main(once=args.once, listen_port=args.port)
