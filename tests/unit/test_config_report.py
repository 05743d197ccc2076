"""`check-config` reports every error of a file with its field path, and semantic warnings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from extproc.config.lint import lint
from extproc.config.snapshot import DEFAULT_CONFIG, compile_config, load_snapshot
from extproc.config.store import ConfigStore
from extproc.core.errors import ConfigError

CASCADE = Path(sys.executable).with_name("cascade")

#: Six independent errors in one file.
SIX_ERRORS = """
tiers:
  - {name: weak, colour: blue}
  - {name: strong}
classifier: v7
classifiers:
  v7:
    default: weak
    rules:
      - {kind: keyword, tier: strong, keywords: [refactor, " debug"]}
      - {name: long, kind: chars, tier: strong, gt: many}
      - {name: longer, kind: chars, tier: medium, gt: 500}
      - {kind: lines, tier: strong, gt: 5}
server: {max_body_bytes: 0}
"""


def errors_of(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigError) as info:
        compile_config(text, "conf.yaml")
    return list(getattr(info.value, "errors", (info.value,)))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CASCADE), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_every_error_is_reported_with_its_path() -> None:
    paths = [(e.path, e.message) for e in errors_of(SIX_ERRORS)]
    assert [p for p, _ in paths] == [
        "tiers[0].colour",
        "classifiers.v7.rules[0].keywords[1]",
        "classifiers.v7.rules[1].gt",
        "classifiers.v7.rules[2].tier",
        "classifiers.v7.rules[3].kind",
        "server.max_body_bytes",
    ]
    assert "expected one of weak, strong, got 'medium'" in paths[3][1]


def test_a_bad_section_does_not_hide_a_missing_key() -> None:
    errors = errors_of("tiers: 5\nclassifiers: {v1: {default: weak}}\n")
    assert [(e.path, e.message) for e in errors] == [
        ("classifier", "is required"),
        ("tiers", "expected a list, got int"),
    ]


def test_one_error_stays_a_plain_config_error() -> None:
    errors = errors_of("tiers: [{name: weak}]\nclassifier: v1\nclassifiers: {v1: {default: x}}\n")
    assert [e.path for e in errors] == ["classifiers.v1.default"]


def test_cli_lists_all_errors_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SIX_ERRORS)
    result = run("check-config", str(bad))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 6
    assert f"error: {bad}: classifiers.v7.rules[1].gt: expected an integer" in lines[2]
    assert f"{bad}: 6 error(s)" in result.stderr


def test_reload_with_many_errors_keeps_the_last_good_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_bytes(DEFAULT_CONFIG.read_bytes())
    store = ConfigStore.open(path)
    good = store.current
    messages: list[tuple[bool, str]] = []
    store.listeners.append(lambda ok, message: messages.append((ok, message)))
    path.write_text(SIX_ERRORS)
    assert store.poll() is False
    assert store.current is good
    ((ok, message),) = messages
    assert not ok
    assert "classifiers.v7.rules[1].gt" in message
    assert "server.max_body_bytes" in message
    assert "(6 errors)" in message


WARNED = """
tiers: [{name: weak}, {name: mid}, {name: strong}]
classifier: v1
classifiers:
  v1:
    default: weak
    rules:
      - {name: kw, kind: keyword, tier: strong, keywords: [debug, debugger, Refactor, refactor]}
      - {name: kw2, kind: keyword, tier: strong, keywords: [debugging, optimize]}
      - {name: kw3, kind: keyword, tier: weak, keywords: [refactoring]}
      - {name: never, kind: chars, tier: strong, gt: 500, lt: 100}
      - {name: long, kind: chars, tier: strong, gt: 500}
      - {name: longer, kind: chars, tier: strong, gt: 800, lt: 5000}
      - {name: bytes, kind: bytes, tier: strong, gt: 800}
"""


def test_semantic_warnings_name_their_paths() -> None:
    found = {(f.path, f.message.split(":")[0]) for f in lint(compile_config(WARNED, "w.yaml"))}
    assert found == {
        (
            "classifiers.v1.rules[0].keywords[1]",
            "keyword 'debugger' contains 'debug' of the same rule, which matches whenever it does",
        ),
        ("classifiers.v1.rules[0].keywords[3]", "keyword 'refactor' is listed twice"),
        ("classifiers.v1.rules[1].keywords[0]", "keyword 'debugging' never decides this rule"),
        ("classifiers.v1.rules[2]", "never decides"),
        ("classifiers.v1.rules[3]", "never matches"),
        ("classifiers.v1.rules[5]", "never decides"),
        ("tiers[1].name", "tier 'mid' is never used"),
    }


def test_the_shipped_configs_have_no_warnings() -> None:
    assert lint(load_snapshot(DEFAULT_CONFIG)) == []


def test_warnings_exit_0_unless_strict(tmp_path: Path) -> None:
    conf = tmp_path / "w.yaml"
    conf.write_text(WARNED)
    loose = run("check-config", str(conf))
    assert loose.returncode == 0, loose.stderr
    assert f"warning: {conf}: classifiers.v1.rules[3]: never matches: chars with gt: 500" in (
        loose.stderr
    )
    assert "7 warning(s)" in loose.stdout
    strict = run("check-config", "--strict", str(conf))
    assert strict.returncode == 1
    clean = run("check-config", "--strict", str(DEFAULT_CONFIG))
    assert clean.returncode == 0, clean.stderr


def test_scorer_warnings(tmp_path: Path) -> None:
    from tests.unit.test_scorer import artifact_document, make_scorer, write_artifact

    sha = write_artifact(tmp_path / "model.json", artifact_document(make_scorer(3)))
    conf = tmp_path / "cascade.yaml"
    conf.write_text(
        "tiers: [{name: weak}, {name: mid}, {name: strong}]\nclassifier: v9\nclassifiers:\n"
        "  v9:\n    default: mid\n    rules:\n"
        f"      - {{name: learned, kind: scorer, model: model.json, sha256: {sha}}}\n"
        "      - {name: long_text, kind: chars, gt: 40, tier: strong}\n"
    )
    found = {(f.path, f.message.split(":")[0]) for f in lint(load_snapshot(conf))}
    assert found == {
        ("classifiers.v9.rules[1]", "never decides"),
        (
            "classifiers.v9.rules[0].model",
            "the artifact was trained for tiers weak, strong; it never chooses mid",
        ),
    }
    # with an abstain band the rule after it can decide
    conf.write_text(conf.read_text().replace(f"sha256: {sha}}}", f"sha256: {sha}, abstain: 0.1}}"))
    found = {f.path for f in lint(load_snapshot(conf))}
    assert found == {"classifiers.v9.rules[0].model"}


def test_commands_loading_a_config_print_one_line_per_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SIX_ERRORS)
    result = run("classify", "--config", str(bad), "-")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 6
    assert all(line.startswith(f"cascade: {bad}: ") for line in lines)
