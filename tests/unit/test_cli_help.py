"""Every `cascade` subcommand's `--help` has one style, and every option states its default.

Walks the real parser (`build_parser`), with the subcommands of installed `cascade.commands`
entry points (the dev package's `demo` and `mock-backend`) included.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from extproc.cli.helpstyle import HelpFormatter, help_with_default, needs_default
from extproc.cli.main import PLUGIN_GROUP, build_parser

CASCADE = Path(sys.executable).with_name("cascade")


def parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    stack = [("cascade", build_parser())]
    while stack:
        name, parser = stack.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend((f"{name} {sub}", child) for sub, child in action.choices.items())


def subcommand_helps() -> Iterator[tuple[str, str | None]]:
    for name, parser in parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    yield f"{name} {choice.dest}", choice.help


def sentence_problem(text: str | None) -> str | None:
    if not text:
        return "no help"
    first = text.split()[0]
    # a name such as gRPC keeps its own case
    if first[0].isalpha() and first[0].islower() and first.islower():
        return "starts in lower case"
    if not text.rstrip().endswith("."):
        return "does not end with a period"
    return None


def test_plugins_are_walked() -> None:
    names = {name for name, _parser in parsers()}
    plugins = {entry.name for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP)}
    assert {"demo", "mock-backend"} <= plugins
    assert {f"cascade {plugin}" for plugin in plugins} <= names
    assert "cascade render envoy" in names


def test_subcommand_summaries_are_sentences() -> None:
    problems = [
        f"{name}: {problem}: {text!r}"
        for name, text in subcommand_helps()
        if (problem := sentence_problem(text))
    ]
    assert problems == []


def test_every_subcommand_has_a_description_in_sentences() -> None:
    problems = [
        f"{name}: {problem}"
        for name, parser in parsers()
        if (problem := sentence_problem(parser.description))
    ]
    assert problems == []


def test_every_option_is_a_sentence_that_states_its_default() -> None:
    problems = []
    for name, parser in parsers():
        assert parser.formatter_class is HelpFormatter, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if problem := sentence_problem(action.help):
                problems.append(f"{label}: {problem}: {action.help!r}")
                continue
            shown = help_with_default(action) % {"default": action.default}
            if needs_default(action) and "default" not in shown.lower():
                problems.append(f"{label}: no default stated: {shown!r}")
            if "(default: None)" in shown or "(default: [])" in shown:
                problems.append(f"{label}: a bare None/[] default: {shown!r}")
    assert problems == []


def test_help_output_shows_defaults() -> None:
    result = subprocess.run(
        [str(CASCADE), "sample", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    text = " ".join(result.stdout.split())
    assert "Rows in the sheet (default: 100)." in text
    assert "(default: off)." in text
    assert "-h, --help Show this help message and exit." in text
