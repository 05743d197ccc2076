"""The `gate:` sections: compiled into the snapshot, errors name the field path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from extproc.config.snapshot import DEFAULT_CONFIG, compile_config, load_snapshot
from extproc.core.errors import ConfigError

CONFIG = """
tiers:
  - name: weak
    gate: {GATE}
  - name: mid
  - name: strong
classifier: v1
classifiers:
  v1:
    default: weak
    rules:
      - {name: finance, kind: keyword, tier: weak, keywords: [invoice], gate: false}
      - {kind: keyword, tier: strong, keywords: [x]}
"""


def config(gate: str = "{}", extra: str = "") -> str:
    return CONFIG.replace("{GATE}", gate) + extra


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_config(text, "conf.yaml")
    return info.value


def test_no_gate_by_default() -> None:
    snapshot = load_snapshot(DEFAULT_CONFIG)
    assert dict(snapshot.gates.tiers) == {}
    assert snapshot.gates.chain("weak") == ("weak",)
    assert not snapshot.gates.applies("weak", "v7", "keyword")


def test_a_gate_with_defaults_escalates_to_the_next_tier() -> None:
    gates = compile_config(config()).gates
    gate = gates.tiers["weak"]
    assert gate.escalate_to == "mid"
    assert (gate.settings.escalate_below, gate.settings.trust_above) == (0.70, 0.85)
    assert (gate.settings.hold_tokens, gate.settings.hold_ms) == (32, 500)
    assert gate.settings.streams
    assert not gate.settings.request_logprobs
    tuned = (
        compile_config(
            config("{logprobs: {request: true, mean_min: -0.5, low_min: -3, min_tokens: 4}}")
        )
        .gates.tiers["weak"]
        .settings
    )
    assert (tuned.request_logprobs, tuned.logprob_mean_min, tuned.logprob_low_min) == (
        True,
        -0.5,
        -3.0,
    )
    assert tuned.logprob_min_tokens == 4
    assert not compile_config(config("{streams: false}")).gates.tiers["weak"].settings.streams
    assert gate.settings.refusal_phrases is not None
    assert gates.chain("weak") == ("weak", "mid")
    assert gates.chain("mid") == ("mid",)
    assert gates.max_escalations == 1


def test_settings_and_weights() -> None:
    gate = compile_config(
        config(
            "{escalate_to: strong, escalate_below: 0.6, trust_above: 0.9, between: near_threshold,"
            " checks: {hedge_phrase: 0.3, logprob_low: 0}, hold_tokens: 8, hold_ms: 200}"
        )
    ).gates.tiers["weak"]
    assert gate.escalate_to == "strong"
    settings = gate.settings
    assert (settings.escalate_below, settings.trust_above, settings.between) == (
        0.6,
        0.9,
        "near_threshold",
    )
    assert settings.weights["hedge_phrase"] == 0.3
    assert settings.weights["logprob_low"] == 0
    assert settings.weights["empty"] == 1.0
    assert (settings.hold_tokens, settings.hold_ms) == (8, 200)


def test_rules_marked_no_gate_bypass() -> None:
    gates = compile_config(config()).gates
    assert not gates.applies("weak", "v1", "finance")
    assert gates.applies("weak", "v1", "keyword")


def test_a_disabled_gate_is_no_gate() -> None:
    assert dict(compile_config(config("{enabled: false}")).gates.tiers) == {}


def test_max_escalations_chains_gated_tiers() -> None:
    text = config(extra="gate: {max_escalations: 2}\n").replace(
        "  - name: mid\n", "  - name: mid\n    gate: {}\n"
    )
    assert compile_config(text).gates.chain("weak") == ("weak", "mid", "strong")
    one = config().replace("  - name: mid\n", "  - name: mid\n    gate: {}\n")
    assert compile_config(one).gates.chain("weak") == ("weak", "mid")
    zero = config(extra="gate: {max_escalations: 0}\n")
    assert compile_config(zero).gates.chain("weak") == ("weak",)


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (
            CONFIG.replace("{GATE}", "{}").replace(
                "  - name: strong\n", "  - name: strong\n    gate: {}\n"
            ),
            "tiers[2].gate",
            "top tier",
        ),
        (config("{escalate_to: weak}"), "tiers[0].gate.escalate_to", "expected one of"),
        (config("{trust_above: 0.5}"), "tiers[0].gate.trust_above", ">= escalate_below"),
        (config("{escalate_below: 1.5}"), "tiers[0].gate.escalate_below", "0..1"),
        (config("{checks: {nope: 1}}"), "tiers[0].gate.checks.nope", "unknown key"),
        (config("{checks: {empty: 2}}"), "tiers[0].gate.checks.empty", "0..1"),
        (config("{between: maybe}"), "tiers[0].gate.between", "expected one of"),
        (config("{hold_tokens: 0}"), "tiers[0].gate.hold_tokens", ">= 1"),
        (config("{hold_ms: 999999}"), "tiers[0].gate.hold_ms", "<= 60000"),
        (config("{colour: red}"), "tiers[0].gate.colour", "unknown key"),
        (config("{streams: 1}"), "tiers[0].gate.streams", "true or false"),
        (config("{logprobs: {mean_min: 0.5}}"), "tiers[0].gate.logprobs.mean_min", "<= 0"),
        (config("{logprobs: {low_quantile: 2}}"), "tiers[0].gate.logprobs.low_quantile", "0..1"),
        (config("{logprobs: {nope: 1}}"), "tiers[0].gate.logprobs.nope", "unknown key"),
        (config("{phrases_file: missing.yaml}"), "tiers[0].gate.phrases_file", "cannot read"),
        (config(extra="gate: {max_escalations: 3}\n"), "gate.max_escalations", "at most 2"),
        (
            config().replace("gate: false", "gate: 'no'"),
            "classifiers.v1.rules[0].gate",
            "true or false",
        ),
    ],
)
def test_errors_name_the_field(text: str, path: str, fragment: str) -> None:
    error = error_of(text)
    assert error.path == path, str(error)
    assert fragment in str(error)


def test_a_phrases_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "phrases.yaml").write_text("refusal: [nope nope]\nhedge: [perhaps]\n", "utf-8")
    path = tmp_path / "cascade.yaml"
    path.write_text(config("{phrases_file: phrases.yaml}"), "utf-8")
    settings = load_snapshot(path).gates.tiers["weak"].settings
    assert settings.refusal_phrases is not None
    assert settings.refusal_phrases.keywords == ("nope nope",)


def test_check_config_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    path.write_text(config("{trust_above: 0.1}"), "utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "tiers[0].gate.trust_above" in result.stdout + result.stderr
