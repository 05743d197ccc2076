"""Which classifier version answers a request, and the decision taken without classifying."""

from __future__ import annotations

from extproc.config.snapshot import Snapshot
from extproc.core.classify import Decision, canary_bucket
from extproc.core.rules import Classifier


def fallback_decision(snapshot: Snapshot, classifier: str, rule: str) -> Decision:
    """The decision used when a request cannot be classified: the default tier."""
    return Decision(tier=snapshot.default_tier, classifier=classifier, rule=rule, reason=rule)


def choose_classifier(snapshot: Snapshot, key: str | bytes | None) -> Classifier:
    """Stable or canary version for a request, sticky per key (e.g. a user id)."""
    canary = snapshot.canary
    if canary is None or canary.weight <= 0 or not key:
        return snapshot.classifiers[snapshot.stable]
    if canary.weight >= 100 or canary_bucket(key) < canary.weight:
        return snapshot.classifiers[canary.version]
    return snapshot.classifiers[snapshot.stable]
