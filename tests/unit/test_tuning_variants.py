"""Which versions the threshold sweep and the tuner may treat as 'target if any rule, else default'."""

from __future__ import annotations

from extproc.core.rules import Classifier, Rule, RuleKind, TextScope
from extproc.tuning.variants import binary_shape

TIERS = ("weak", "strong")


def version(*rules: Rule, default: str = "weak") -> Classifier:
    return Classifier(version="v", text=TextScope.ALL, default=default, rules=rules)


def test_rules_to_one_tier_and_another_default_are_binary() -> None:
    long = Rule(name="long", kind=RuleKind.CHARS, tier="strong", gt=500)
    many = Rule(name="many", kind=RuleKind.MESSAGES, tier="strong", gt=5)
    assert binary_shape(version(long, many), TIERS) == ("strong", "weak")
    assert binary_shape(version(), TIERS) == ("strong", "weak")


def test_mixed_targets_or_a_default_equal_to_the_target_are_not() -> None:
    up = Rule(name="up", kind=RuleKind.CHARS, tier="strong", gt=500)
    down = Rule(name="down", kind=RuleKind.CHARS, tier="weak", lt=10)
    assert binary_shape(version(up, down), TIERS) is None
    assert binary_shape(version(up, default="strong"), TIERS) is None


def test_a_scorer_step_is_never_binary() -> None:
    """A scorer may choose any tier: sweeping it as a one-target rule would misjudge it."""
    scorer = Rule(name="scorer", kind=RuleKind.SCORER, tier="strong")
    long = Rule(name="long", kind=RuleKind.CHARS, tier="strong", gt=500)
    assert binary_shape(version(long, scorer), TIERS) is None
