"""The `cascade` command line. Each subcommand lives in its own module with `register(sub)`.

Other installed distributions add subcommands through the `cascade.commands` entry-point group
(the development package `cascade-dev` adds `demo` and `mock-backend` this way), so the server
package never imports them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

from extproc import __version__
from extproc.cli.helpstyle import CascadeParser

#: Modules that add subcommands; imported at start, their heavy imports happen inside `run`.
COMMAND_MODULES: tuple[str, ...] = (
    "extproc.cli.config",
    "extproc.cli.serve",
    "extproc.cli.render",
    "extproc.cli.canary",
    "extproc.cli.tuning",
    "extproc.cli.train",
    "extproc.cli.cache",
    "extproc.cli.judge",
)


#: Entry-point group of subcommand modules from other distributions (each has `register(sub)`).
PLUGIN_GROUP = "cascade.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = CascadeParser(
        prog="cascade",
        description="Route each LLM chat request to the cheapest model tier that can handle it.",
    )
    parser.add_argument(
        "--version", action="version", version=f"cascade {__version__}", help="Print the version."
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CascadeParser
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for entry in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        entry.load().register(sub)
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
