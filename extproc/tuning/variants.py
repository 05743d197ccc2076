"""Classifier variants, built as config documents and compiled by `compile_document`.

The offline tools never construct `Classifier` objects by hand: a variant (a version without
some rules, a tuning candidate) is a config document, validated and compiled by the same code
that loads the server's config, and run through the same `classify()`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from extproc.config.snapshot import Classifier, Snapshot, compile_document
from extproc.core.rules import RuleKind


def version_spec(snapshot: Snapshot, version: str) -> dict[str, Any]:
    """A deep copy of a version's raw YAML mapping (rules, text scope, default, ...)."""
    spec = snapshot.raw["classifiers"][version]
    return copy.deepcopy(dict(spec))


def variant_document(snapshot: Snapshot, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The snapshot's document with only the given classifier versions (the first is stable)."""
    document = {key: copy.deepcopy(value) for key, value in snapshot.raw.items()}
    document.pop("canary", None)
    document["classifiers"] = {name: copy.deepcopy(dict(spec)) for name, spec in specs.items()}
    document["classifier"] = next(iter(specs))
    return document


def compile_variant(snapshot: Snapshot, name: str, spec: Mapping[str, Any]) -> Classifier:
    """Compile one version spec in the context of the snapshot's tiers (raises ConfigError)."""
    compiled = compile_document(variant_document(snapshot, {name: spec}), f"<variant {name}>")
    return compiled.classifiers[name]


def binary_shape(classifier: Classifier, tiers: tuple[str, ...]) -> tuple[str, str] | None:
    """(target, default) when every enabled rule sends to one tier and the default is another.

    Such a version decides "target if any rule matches, else default", whatever the rule order,
    which is what the threshold sweep and the tuner rely on. None for any other shape, and for a
    version with a learned scorer step (it may send a request to any tier, whatever its `tier`).
    """
    if any(rule.kind is RuleKind.SCORER for rule in classifier.rules):
        return None
    targets = {rule.tier for rule in classifier.rules}
    if len(targets) > 1:
        return None
    if targets:
        target = next(iter(targets))
    else:
        target = tiers[-1] if classifier.default != tiers[-1] else tiers[0]
    if target == classifier.default:
        return None
    return target, classifier.default


def is_enabled(rule: Mapping[str, Any]) -> bool:
    return rule.get("enabled", True) is not False
