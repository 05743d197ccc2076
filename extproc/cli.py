"""The `cascade` command line. Each subcommand lives in its own module with `register(sub)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that add subcommands; imported at start, their heavy imports happen inside `run`.
COMMAND_MODULES: tuple[str, ...] = (
    "extproc.cli_config",
    "extproc.cli_serve",
    "extproc.cli_render",
    "extproc.cli_demo",
    "extproc.cli_mock",
    "extproc.cli_canary",
    "extproc.cli_tuning",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Route each LLM chat request to the cheapest model tier that can handle it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
