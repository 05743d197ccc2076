"""The confidence gate's config: a `gate:` section per tier, `gate:` on rules, a top-level `gate:`.

```yaml
tiers:
  - name: weak
    gate:                       # judge weak's answers; escalate failing ones
      escalate_to: strong       # default: the next tier in rank order
      escalate_below: 0.70
      trust_above: 0.85
      between: accept           # or near_threshold (see extproc.core.gate)
      near_margin: 0.1
      checks: {hedge_phrase: 0.3, logprob_low: 0}   # weights; 0 turns a check off
      phrases_file: my-phrases.yaml                  # default: the shipped list
      streams: true             # hold and judge streamed answers too
      hold_tokens: 32           # streamed answers: the held prefix
      hold_ms: 500
      logprobs: {request: false, mean_min: -1.2, low_quantile: 0.1, low_min: -4.0, min_tokens: 8}
  - name: strong                # the top tier: a gate here is an error
classifiers:
  v7:
    rules:
      - {name: finance, kind: keyword, keywords: [...], tier: weak, gate: false}   # no gate
gate:
  max_escalations: 1            # per request (0 = gates judge and count, never escalate)
```

The compiled `Gates` sits in the snapshot; `extproc.gateway.gate` renders the Envoy side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from extproc.config.check import Checker, join_path
from extproc.config.tiers import Tier
from extproc.core.gate import CHECKS, GateSettings
from extproc.core.keywords import KeywordMatcher

__all__ = ["DEFAULT_PHRASES", "Gates", "TierGate", "compile_gates"]

DEFAULT_PHRASES = Path(__file__).parent.parent / "defaults" / "gate_phrases.yaml"

_GATE_KEYS = {
    "enabled",
    "escalate_to",
    "escalate_below",
    "trust_above",
    "between",
    "near_margin",
    "checks",
    "phrases_file",
    "refusal_window",
    "phrase_window",
    "hold_tokens",
    "hold_ms",
    "streams",
    "logprobs",
}
_LOGPROB_KEYS = {"request", "mean_min", "low_quantile", "low_min", "min_tokens"}
BETWEEN = ("accept", "near_threshold")
MAX_HOLD_TOKENS = 4096
MAX_HOLD_MS = 60_000


@dataclass(frozen=True, slots=True)
class TierGate:
    tier: str
    escalate_to: str
    settings: GateSettings


@dataclass(frozen=True, slots=True)
class Gates:
    """Every gated tier, the rules that bypass gates, the per-request budget."""

    tiers: Mapping[str, TierGate] = field(default_factory=dict)
    max_escalations: int = 1
    #: (classifier version, rule name) of rules marked `gate: false`
    bypass: frozenset[tuple[str, str]] = frozenset()

    def chain(self, tier: str) -> tuple[str, ...]:
        """The tiers a request decided for `tier` may be escalated through (itself first)."""
        chain = [tier]
        while len(chain) <= self.max_escalations:
            gate = self.tiers.get(chain[-1])
            if gate is None or gate.escalate_to in chain:
                break
            chain.append(gate.escalate_to)
        return tuple(chain)

    def applies(self, tier: str, classifier: str, rule: str) -> bool:
        """A request decided for `tier` by this rule is gated (on its first tier)."""
        return len(self.chain(tier)) > 1 and (classifier, rule) not in self.bypass


def _phrases(check: Checker, path: str, file: Path) -> tuple[KeywordMatcher, KeywordMatcher]:
    try:
        document = yaml.safe_load(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise check.fail(path, f"cannot read phrase list {file.name}: {exc}") from exc
    spec = check.mapping(document, path, {"refusal", "hedge"}, {"refusal", "hedge"})
    lists = []
    for key in ("refusal", "hedge"):
        phrases = check.strings(spec[key], join_path(path, key))
        # Models write both apostrophes: "can't" and "can’t".
        expanded = [*phrases, *(p.replace("'", "\u2019") for p in phrases if "'" in p)]
        lists.append(KeywordMatcher(expanded))
    return lists[0], lists[1]


def _unit(check: Checker, value: object, path: str) -> float:
    number = check.number(value, path)
    if number > 1.0:
        raise check.fail(path, f"expected a number in 0..1, got {number}")
    return number


def _bounded(check: Checker, value: object, path: str, high: int) -> int:
    number = check.integer(value, path, minimum=1)
    if number > high:
        raise check.fail(path, f"expected an integer <= {high}, got {number}")
    return number


def _negative(check: Checker, value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise check.fail(path, f"expected a number, got {type(value).__name__}")
    if value > 0:
        raise check.fail(path, f"expected a logprob (<= 0), got {value}")
    return float(value)


def _logprobs(check: Checker, value: object, path: str, defaults: GateSettings) -> dict[str, Any]:
    """The `logprobs:` mapping of a gate: thresholds of the logprob checks, and `request`."""
    spec = check.mapping(value if value is not None else {}, path, _LOGPROB_KEYS)
    quantile = _unit(
        check, spec.get("low_quantile", defaults.logprob_quantile), f"{path}.low_quantile"
    )
    return {
        "request_logprobs": check.boolean(spec.get("request", False), join_path(path, "request")),
        "logprob_mean_min": _negative(
            check, spec.get("mean_min", defaults.logprob_mean_min), f"{path}.mean_min"
        ),
        "logprob_quantile": quantile,
        "logprob_low_min": _negative(
            check, spec.get("low_min", defaults.logprob_low_min), f"{path}.low_min"
        ),
        "logprob_min_tokens": _bounded(
            check,
            spec.get("min_tokens", defaults.logprob_min_tokens),
            f"{path}.min_tokens",
            1 << 20,
        ),
    }


def _tier_gate(
    check: Checker, tier: Tier, spec: Any, path: str, tiers: tuple[Tier, ...], base: Path
) -> TierGate | None:
    gate = check.mapping(spec, path, _GATE_KEYS)
    if not check.boolean(gate.get("enabled", True), join_path(path, "enabled")):
        return None
    higher = tuple(t.name for t in tiers if t.rank > tier.rank)
    if not higher:
        raise check.fail(path, "the top tier has no tier to escalate to; remove its gate")
    target = check.choice(
        gate.get("escalate_to", higher[0]), join_path(path, "escalate_to"), higher
    )
    defaults = GateSettings()
    low = _unit(
        check, gate.get("escalate_below", defaults.escalate_below), f"{path}.escalate_below"
    )
    high = _unit(check, gate.get("trust_above", defaults.trust_above), f"{path}.trust_above")
    if high < low:
        raise check.fail(join_path(path, "trust_above"), f"must be >= escalate_below ({low})")
    weights = dict(CHECKS)
    checks_path = join_path(path, "checks")
    for name, weight in check.mapping(gate.get("checks", {}), checks_path, set(CHECKS)).items():
        weights[name] = _unit(check, weight, join_path(checks_path, name))
    files_path = join_path(path, "phrases_file")
    file = DEFAULT_PHRASES
    if "phrases_file" in gate:
        file = base / check.string(gate["phrases_file"], files_path)
    refusal, hedge = _phrases(check, files_path, file)
    settings = replace(
        defaults,
        escalate_below=low,
        trust_above=high,
        between=check.choice(gate.get("between", "accept"), join_path(path, "between"), BETWEEN),
        near_margin=_unit(
            check, gate.get("near_margin", defaults.near_margin), f"{path}.near_margin"
        ),
        weights=weights,
        refusal_phrases=refusal,
        hedge_phrases=hedge,
        refusal_window=_bounded(
            check,
            gate.get("refusal_window", defaults.refusal_window),
            f"{path}.refusal_window",
            1 << 16,
        ),
        phrase_window=_bounded(
            check,
            gate.get("phrase_window", defaults.phrase_window),
            f"{path}.phrase_window",
            1 << 20,
        ),
        hold_tokens=_bounded(
            check,
            gate.get("hold_tokens", defaults.hold_tokens),
            f"{path}.hold_tokens",
            MAX_HOLD_TOKENS,
        ),
        streams=check.boolean(gate.get("streams", True), join_path(path, "streams")),
        hold_ms=_bounded(
            check, gate.get("hold_ms", defaults.hold_ms), f"{path}.hold_ms", MAX_HOLD_MS
        ),
        **_logprobs(check, gate.get("logprobs"), join_path(path, "logprobs"), defaults),
    )
    return TierGate(tier.name, target, settings)


def _bypass(check: Checker, classifiers: Any) -> frozenset[tuple[str, str]]:
    """Rules with `gate: false` (the classifier compiler has checked the rest of each rule)."""
    found = set()
    for version, spec in classifiers.items() if isinstance(classifiers, dict) else ():
        rules = spec.get("rules", []) if isinstance(spec, dict) else []
        for index, rule in enumerate(rules if isinstance(rules, list) else []):
            if not isinstance(rule, dict) or "gate" not in rule:
                continue
            path = join_path(join_path(join_path("classifiers", str(version)), "rules"), index)
            if not check.boolean(rule["gate"], join_path(path, "gate")):
                found.add((str(version), str(rule.get("name") or rule.get("kind"))))
    return frozenset(found)


def compile_gates(
    check: Checker, raw_tiers: Any, tiers: tuple[Tier, ...], classifiers: Any, top: Any
) -> Gates:
    """Every tier's `gate:`, the rules' `gate: false`, the top-level `gate:` section."""
    base = (
        Path(check.source).parent if check.source and not check.source.startswith("<") else Path()
    )
    gated: dict[str, TierGate] = {}
    for index, (tier, spec) in enumerate(zip(tiers, raw_tiers, strict=True)):
        if isinstance(spec, dict) and spec.get("gate") is not None:
            path = join_path(join_path("tiers", index), "gate")
            found = _tier_gate(check, tier, spec["gate"], path, tiers, base)
            if found is not None:
                gated[tier.name] = found
    budget = 1
    if top is not None:
        section = check.mapping(top, "gate", {"max_escalations"})
        budget = check.integer(section.get("max_escalations", 1), "gate.max_escalations")
        if budget > max(0, len(tiers) - 1):
            raise check.fail(
                "gate.max_escalations", f"expected at most {len(tiers) - 1} (tiers above the first)"
            )
    return Gates(gated, budget, _bypass(check, classifiers))
