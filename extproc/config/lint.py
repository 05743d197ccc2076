"""Semantic warnings about a valid config: rules that can never decide, tiers nothing reaches.

`cascade check-config` prints these; they never refuse a config (the server loads it as it is),
unless `--strict` is given. Each finding names the field path in the file, like an error.

What is found:

- a length rule whose range is empty (`gt: 500, lt: 100`, or `lt: 0`): it never matches;
- a rule shadowed by an earlier one of the same version: a length rule of the same kind whose
  range lies inside an earlier one's, a keyword rule whose every keyword contains a keyword of an
  earlier rule (matching is case-insensitive substring search), anything after a scorer rule
  that never abstains; a single keyword shadowed that way is reported on its own;
- a keyword that contains another keyword of the same rule (it adds nothing to the match), or
  appears twice;
- a tier that no routing version (the stable one and the canary) can decide, that is not the
  default tier and that no tier falls back or mirrors to;
- a scorer artifact trained for fewer tiers than the config has (it never chooses the others).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extproc.config.check import join_path
from extproc.config.snapshot import Snapshot
from extproc.core.rules import Classifier, Rule


@dataclass(frozen=True, slots=True)
class Finding:
    """One warning: where in the file, and why."""

    path: str
    message: str


def lint(snapshot: Snapshot) -> list[Finding]:
    """Every warning about `snapshot`, in file order (versions, then tiers)."""
    findings: list[Finding] = []
    raw_versions = snapshot.raw.get("classifiers") or {}
    for version, classifier in snapshot.classifiers.items():
        raw = raw_versions.get(version) or {}
        findings += _lint_version(classifier, raw.get("rules") or [], f"classifiers.{version}")
    findings += _unreachable_tiers(snapshot)
    return findings


def _lint_version(classifier: Classifier, raw_rules: Sequence[Any], path: str) -> list[Finding]:
    findings: list[Finding] = []
    where = _rule_paths(raw_rules, join_path(path, "rules"))
    keywords_of = {rule.name: _raw_keywords(raw_rules, rule.name) for rule in classifier.rules}
    for position, rule in enumerate(classifier.rules):
        rule_path = where.get(rule.name, join_path(path, "rules"))
        earlier = classifier.rules[:position]
        if _is_range(rule) and _empty_range(rule):
            findings.append(Finding(rule_path, f"never matches: {_range_text(rule)} is empty"))
            continue
        blocker = _shadowing_rule(rule, earlier)
        if blocker is not None:
            findings.append(Finding(rule_path, f"never decides: {blocker}"))
            continue
        if rule.matcher is not None:
            findings += _lint_keywords(rule, earlier, keywords_of[rule.name], rule_path)
    return findings


def _rule_paths(raw_rules: Sequence[Any], path: str) -> dict[str, str]:
    """Rule name -> `...rules[i]` (names are unique per version; a rule's default name is its
    kind)."""
    paths: dict[str, str] = {}
    for index, item in enumerate(raw_rules):
        if isinstance(item, Mapping):
            paths[str(item.get("name", item.get("kind", "")))] = join_path(path, index)
    return paths


def _raw_keywords(raw_rules: Sequence[Any], name: str) -> list[str]:
    for item in raw_rules:
        if isinstance(item, Mapping) and str(item.get("name", item.get("kind", ""))) == name:
            return [str(word) for word in item.get("keywords") or []]
    return []


def _is_range(rule: Rule) -> bool:
    return rule.matcher is None and rule.scorer is None


def _bounds(rule: Rule) -> tuple[int, float]:
    """The integers a length rule matches: lo <= value <= hi."""
    low = rule.gt + 1 if rule.gt is not None else 0
    high = rule.lt - 1 if rule.lt is not None else float("inf")
    return low, high


def _empty_range(rule: Rule) -> bool:
    low, high = _bounds(rule)
    return low > high


def _range_text(rule: Rule) -> str:
    parts = [
        f"{key}: {value}" for key, value in (("gt", rule.gt), ("lt", rule.lt)) if value is not None
    ]
    return f"{rule.kind.value} with {', '.join(parts)}"


def _shadowing_rule(rule: Rule, earlier: Sequence[Rule]) -> str | None:
    """Why an earlier rule always decides before `rule` can, or None."""
    for other in earlier:
        if other.scorer is not None and other.scorer.abstain == 0:
            return f"rule {other.name!r} (a scorer that never abstains) decides every request first"
        if other.text is not rule.text:  # they read different text: not comparable
            continue
        if _is_range(rule) and _is_range(other) and other.kind is rule.kind:
            low, high = _bounds(rule)
            other_low, other_high = _bounds(other)
            if not _empty_range(other) and other_low <= low and high <= other_high:
                return (
                    f"rule {other.name!r} ({_range_text(other)}) matches every request "
                    "this one matches, and comes first"
                )
        if rule.matcher is not None and other.matcher is not None:
            words = rule.matcher.keywords
            if all(_covered_by(word, other.matcher.keywords) for word in words):
                return f"every keyword contains a keyword of rule {other.name!r}, which comes first"
    return None


def _covered_by(word: str, keywords: Sequence[str]) -> str | None:
    for other in keywords:
        if other in word:
            return other
    return None


def _lint_keywords(
    rule: Rule, earlier: Sequence[Rule], raw_words: list[str], rule_path: str
) -> list[Finding]:
    assert rule.matcher is not None
    findings: list[Finding] = []
    seen: list[str] = []
    lowered = rule.matcher.keywords
    for index, raw_word in enumerate(raw_words):
        word = raw_word.lower()
        path = join_path(join_path(rule_path, "keywords"), index)
        if word in seen:
            findings.append(Finding(path, f"keyword {raw_word!r} is listed twice"))
            continue
        seen.append(word)
        inner = _covered_by(word, [k for k in lowered if k != word])
        if inner is not None:
            findings.append(
                Finding(
                    path,
                    f"keyword {raw_word!r} contains {inner!r} of the same rule, which matches "
                    "whenever it does: it adds nothing",
                )
            )
            continue
        for other in earlier:
            if other.matcher is not None and other.text is rule.text:
                hit = _covered_by(word, other.matcher.keywords)
                if hit is not None:
                    findings.append(
                        Finding(
                            path,
                            f"keyword {raw_word!r} never decides this rule: it contains {hit!r} "
                            f"of rule {other.name!r}, which comes first",
                        )
                    )
                    break
    return findings


def _live_rules(classifier: Classifier) -> list[Rule]:
    live: list[Rule] = []
    for position, rule in enumerate(classifier.rules):
        if _is_range(rule) and _empty_range(rule):
            continue
        if _shadowing_rule(rule, classifier.rules[:position]) is None:
            live.append(rule)
    return live


def _unreachable_tiers(snapshot: Snapshot) -> list[Finding]:
    versions = [snapshot.stable] + ([snapshot.canary.version] if snapshot.canary else [])
    reached = {snapshot.default_tier}
    for tier in snapshot.tiers:
        reached.update(t for t in (tier.fallback, tier.mirror.tier if tier.mirror else None) if t)
    for version in versions:
        classifier = snapshot.classifiers[version]
        reached.add(classifier.default)
        for rule in _live_rules(classifier):
            reached.update(rule.scorer.scorer.tiers if rule.scorer is not None else (rule.tier,))
    routing = " and ".join(repr(v) for v in versions)
    findings: list[Finding] = []
    for index, tier in enumerate(snapshot.tiers):
        if tier.name not in reached:
            findings.append(
                Finding(
                    join_path(join_path("tiers", index), "name"),
                    f"tier {tier.name!r} is never used: no rule of classifier {routing} decides "
                    "it, it is not a default, and no tier falls back or mirrors to it",
                )
            )
    findings += _scorer_fit(snapshot)
    return findings


def _scorer_fit(snapshot: Snapshot) -> list[Finding]:
    findings: list[Finding] = []
    raw_versions = snapshot.raw.get("classifiers") or {}
    for version, classifier in snapshot.classifiers.items():
        where = _rule_paths(
            (raw_versions.get(version) or {}).get("rules") or [],
            f"classifiers.{version}.rules",
        )
        for rule in classifier.rules:
            if rule.scorer is None:
                continue
            trained = rule.scorer.scorer.tiers
            missing = [t for t in snapshot.tier_names if t not in trained]
            if missing:
                findings.append(
                    Finding(
                        join_path(where.get(rule.name, ""), "model"),
                        f"the artifact was trained for tiers {', '.join(trained)}; it never "
                        f"chooses {', '.join(missing)}",
                    )
                )
    return findings
