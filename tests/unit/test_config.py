"""Config validation: every error names the file, the field path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config.snapshot import DEFAULT_CONFIG, compile_config, load_snapshot
from extproc.core.errors import ConfigError

BASE = """
tiers: [{name: weak}, {name: strong}]
classifier: v1
classifiers:
  v1:
    default: weak
    rules:
      - {kind: keyword, tier: strong, keywords: [x]}
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_config(text, "conf.yaml")
    return info.value


def test_default_config_is_v7(tmp_path: Path) -> None:
    snapshot = load_snapshot(DEFAULT_CONFIG)
    assert snapshot.stable == "v7"
    assert snapshot.tier_names == ("weak", "strong")
    assert snapshot.default_tier == "weak"
    v7 = snapshot.classifiers["v7"]
    matcher = v7.rules[0].matcher
    assert matcher is not None
    assert len(matcher.keywords) == 7 + 7 + 10
    assert (v7.rules[1].gt, v7.rules[2].gt) == (500, 5)


def test_minimal_config_compiles() -> None:
    snapshot = compile_config(BASE, "conf.yaml")
    assert snapshot.server.paths == ("/v1/chat/completions",)
    assert snapshot.server.rewrite_model  # the default: every attempt gets its model
    assert snapshot.digest


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (BASE + "colour: blue\n", "colour", "unknown key"),
        (
            BASE.replace("default: weak", "default: medium"),
            "classifiers.v1.default",
            "expected one of weak, strong",
        ),
        (BASE.replace("tier: strong", "tier: huge"), "classifiers.v1.rules[0].tier", "got 'huge'"),
        (
            BASE.replace("keywords: [x]", "keywords: ['']"),
            "classifiers.v1.rules[0].keywords[0]",
            "empty keyword",
        ),
        (
            BASE.replace("keywords: [x]", "keywords: []"),
            "classifiers.v1.rules[0].keywords",
            "non-empty list",
        ),
        (
            BASE.replace("keywords: [x]", "keywords: [' x']"),
            "classifiers.v1.rules[0].keywords[0]",
            "whitespace",
        ),
        (
            BASE.replace("keywords: [x]", "keywords: [3]"),
            "classifiers.v1.rules[0].keywords[0]",
            "expected a string",
        ),
        (BASE.replace("    default: weak\n", ""), "classifiers.v1.default", "is required"),
        (BASE.replace("classifier: v1", "classifier: v9"), "classifier", "got 'v9'"),
        (
            BASE.replace("kind: keyword", "kind: regex"),
            "classifiers.v1.rules[0].kind",
            "expected one of",
        ),
        (
            BASE.replace("keywords: [x]", "keywords: [x], gt: 3"),
            "classifiers.v1.rules[0].gt",
            "not allowed",
        ),
        (
            BASE.replace(
                "{kind: keyword, tier: strong, keywords: [x]}", "{kind: chars, tier: strong}"
            ),
            "classifiers.v1.rules[0]",
            "needs 'gt'",
        ),
        (
            BASE.replace(
                "{kind: keyword, tier: strong, keywords: [x]}",
                "{kind: chars, tier: strong, gt: '5'}",
            ),
            "classifiers.v1.rules[0].gt",
            "expected an integer",
        ),
        (
            BASE.replace(
                "{kind: keyword, tier: strong, keywords: [x]}",
                "{kind: chars, tier: strong, gt: -1}",
            ),
            "classifiers.v1.rules[0].gt",
            ">= 0",
        ),
        (
            BASE.replace(
                "{kind: keyword, tier: strong, keywords: [x]}",
                "{kind: messages, tier: strong, gt: 1, enabled: 'no'}",
            ),
            "classifiers.v1.rules[0].enabled",
            "true or false",
        ),
        (
            BASE.replace("[{name: weak}, {name: strong}]", "[{name: weak}, {name: weak}]"),
            "tiers[1].name",
            "duplicate tier",
        ),
        (BASE.replace("[{name: weak}, {name: strong}]", "[]"), "tiers", "non-empty list"),
        (
            BASE.replace(
                "[{name: weak}, {name: strong}]",
                "[{name: weak, price: {per_hour: -2}}, {name: strong}]",
            ),
            "tiers[0].price.per_hour",
            ">= 0",
        ),
        (BASE + "default_tier: nope\n", "default_tier", "expected one of"),
        (BASE + "server: {paths: [v1/chat]}\n", "server.paths[0]", "starting with '/'"),
        (BASE + "server: {max_body_bytes: 0}\n", "server.max_body_bytes", ">= 1"),
        (BASE + "canary: {version: v1, weight: 5}\n", "canary.version", "must differ"),
        ("tiers: [weak]\n", "", "is required"),
        ("- a\n- b\n", "", "expected a mapping"),
    ],
)
def test_config_errors_name_field_and_expectation(text: str, path: str, fragment: str) -> None:
    error = error_of(text)
    assert error.source == "conf.yaml"
    if path:
        assert error.path == path
    assert fragment in error.message
    assert str(error).startswith("conf.yaml")


def test_invalid_yaml_names_line() -> None:
    error = error_of("tiers: [a\nclassifier: : :\n")
    assert "invalid YAML" in error.message
    assert error.path.startswith("line ")


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_snapshot(tmp_path / "absent.yaml")


def test_canary_weight_is_a_percentage() -> None:
    text = BASE + "  v2: {default: strong}\ncanary: {version: v2, weight: 150}\n"
    assert "0..100" in error_of(text).message
