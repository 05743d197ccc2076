"""One `--help` style for every `cascade` subcommand, plugins included.

Help texts are sentences: a capital first letter, a final period. Every option's help states its
default: `HelpFormatter` appends ` (default: X)` before the final period unless the text already
says what the default is (it mentions "default"), an on/off flag gets `(default: off)`, and an
option whose default is None or empty must say in words what happens without it (a test walks
every parser, `tests/unit/test_cli_help.py`).

`CascadeParser` uses the formatter; `cascade`'s subparsers create `CascadeParser`s, so a
subcommand registered through the `cascade.commands` entry points gets the same style, and a
subcommand without a description shows its one-line summary at the top of its `--help`.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Actions whose help needs no default (they do something instead of holding a value).
NO_VALUE = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def needs_default(action: argparse.Action) -> bool:
    """Options, and positionals that may be left out, hold a default worth stating."""
    if isinstance(action, NO_VALUE) or action.default is argparse.SUPPRESS:
        return False
    if action.option_strings:
        return not action.required
    return action.nargs in ("?", "*")


def default_text(action: argparse.Action) -> str | None:
    """` (default: X)` for `action`, or None when the help must say it in words."""
    if isinstance(action, argparse._StoreTrueAction):
        return " (default: off)"
    if isinstance(action, argparse._StoreFalseAction):
        return " (default: on)"
    default = action.default
    if default is None or (isinstance(default, list | tuple) and not default):
        return None
    return " (default: %(default)s)"


def help_with_default(action: argparse.Action) -> str:
    """The help text as shown (before argparse's `%` expansion)."""
    text = action.help or ""
    if not needs_default(action) or "default" in text.lower():
        return text
    suffix = default_text(action)
    if suffix is None:
        return text
    if text.endswith("."):
        return text[:-1] + suffix + "."
    return text + suffix


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; option helps get their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return help_with_default(action)


class SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose `--help` opens with their one-line summary when they have no
    description of their own."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"]
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        return parser


class CascadeParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        add_help = kwargs.get("add_help", True)
        kwargs["add_help"] = False
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", SubParsers)
        if add_help:  # argparse's own text is lower case without a period
            self.add_argument(
                "-h", "--help", action="help", help="Show this help message and exit."
            )
