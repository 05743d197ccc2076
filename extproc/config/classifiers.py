"""The `classifiers:` and `canary:` sections: classifier versions, their rules, and the canary
version with the rollout policy `cascade canary` follows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from extproc.config.check import Checker, join_path
from extproc.core.keywords import KeywordMatcher
from extproc.core.rules import Classifier, Rule, RuleKind, TextScope


@dataclass(frozen=True, slots=True)
class Trigger:
    """A rollback condition of `cascade canary`: `query` above `above` for `for_s` seconds."""

    name: str
    #: PromQL; `$version` and `$window` (e.g. `300s`) are substituted before it is sent
    query: str
    above: float
    window_s: int
    for_s: int


#: Requests the canary version decided in the window (`min_requests` is compared with it).
DEFAULT_VOLUME_QUERY = 'sum(increase(cascade_decisions_total{classifier="$version"}[$window]))'

#: The seeds' rollback triggers. The response metrics need a `classifier` label for these; a
#: query that returns nothing (metric or label absent) is reported as "no data" and skipped.
DEFAULT_TRIGGERS = (
    Trigger(
        name="error_rate",
        query=(
            'sum(rate(cascade_responses_total{classifier="$version",status=~"5.*"}[$window]))'
            ' / sum(rate(cascade_responses_total{classifier="$version"}[$window]))'
        ),
        above=0.02,
        window_s=300,
        for_s=300,
    ),
    Trigger(
        name="p99_latency_s",
        query=(
            "histogram_quantile(0.99, sum by (le) (rate("
            'cascade_response_duration_seconds_bucket{classifier="$version"}[$window])))'
        ),
        above=15.0,
        window_s=300,
        for_s=300,
    ),
    Trigger(
        name="misroute_rate",
        query=(
            'sum(increase(cascade_misroute_suspected_total{classifier="$version"}[$window]))'
            ' / sum(increase(cascade_decisions_total{classifier="$version"}[$window]))'
        ),
        above=0.08,
        window_s=86400,
        for_s=0,
    ),
)


@dataclass(frozen=True, slots=True)
class Rollout:
    """How `cascade canary` steps the canary's weight and when it rolls back."""

    prometheus: str = "http://127.0.0.1:9090"
    steps: tuple[float, ...] = (10.0, 50.0, 100.0)
    #: time spent healthy at a step before the next one
    step_interval_s: int = 3600
    check_interval_s: int = 30
    #: a trigger is judged only when the canary served at least this many requests in its window
    min_requests: int = 100
    volume_query: str = DEFAULT_VOLUME_QUERY
    triggers: tuple[Trigger, ...] = DEFAULT_TRIGGERS


@dataclass(frozen=True, slots=True)
class Canary:
    version: str
    weight: float  # percent of requests, 0..100
    key_header: str
    rollout: Rollout = field(default_factory=Rollout)


_RULE_KEYS = {"name", "kind", "tier", "keywords", "gt", "lt", "enabled", "text", "gate"}
_SCORER_KEYS = {
    "name",
    "kind",
    "model",
    "sha256",
    "threshold",
    "strong_share",
    "abstain",
    "enabled",
    "gate",
}


def compile_classifier(
    check: Checker, version: str, value: object, path: str, tiers: tuple[str, ...]
) -> Classifier:
    """One version; each rule is checked on its own, so every bad rule is reported.

    `tiers` empty means the tiers themselves are invalid: tier names are then not checked here.
    """
    spec = check.mapping(value, path, {"text", "default", "rules", "description"}, {"default"})
    if not version.replace("_", "").replace("-", "").replace(".", "").isalnum():
        check.record(
            check.fail(path, "classifier version must be letters, digits, '.', '-' or '_'")
        )
    if "description" in spec:
        check.attempt(
            lambda: check.string(spec["description"], join_path(path, "description"), empty=True),
            "",
        )
    scopes = tuple(s.value for s in TextScope)
    scope = TextScope(
        check.attempt(
            lambda: check.choice(spec.get("text", "all"), join_path(path, "text"), scopes), "all"
        )
    )
    default = check.attempt(
        lambda: _tier(check, spec["default"], join_path(path, "default"), tiers), ""
    )
    rules: list[Rule] = []
    disabled: list[str] = []
    seen: set[str] = set()
    items: list[Any] = check.attempt(
        lambda: check.sequence(spec.get("rules", []), join_path(path, "rules"), empty=True), []
    )
    for index, item in enumerate(items):
        rule_path = join_path(join_path(path, "rules"), index)
        compiled = check.attempt(partial(_compile_any_rule, check, item, rule_path, tiers), None)
        if compiled is None:
            continue
        rule, enabled = compiled
        if rule.name in seen:
            check.record(
                check.fail(join_path(rule_path, "name"), f"duplicate rule name {rule.name!r}")
            )
            continue
        seen.add(rule.name)
        if enabled:
            rules.append(rule)
        else:
            disabled.append(rule.name)
    return Classifier(
        version=version,
        text=scope,
        default=default,
        rules=tuple(rules),
        disabled_rules=tuple(disabled),
    )


def _compile_any_rule(
    check: Checker, item: object, rule_path: str, tiers: tuple[str, ...]
) -> tuple[Rule, bool]:
    if isinstance(item, dict) and item.get("kind") == RuleKind.SCORER.value:
        rule_spec = check.mapping(item, rule_path, _SCORER_KEYS, {"model", "sha256"})
        rule = _compile_scorer(check, rule_spec, rule_path, tiers)
    else:
        rule_spec = check.mapping(item, rule_path, _RULE_KEYS, {"kind", "tier"})
        rule = _compile_rule(check, rule_spec, rule_path, tiers)
    return rule, check.boolean(rule_spec.get("enabled", True), join_path(rule_path, "enabled"))


def _tier(check: Checker, value: object, path: str, tiers: tuple[str, ...]) -> str:
    """A tier name from `tiers`; any string when the tiers are unknown (they have an error)."""
    return check.choice(value, path, tiers) if tiers else check.string(value, path)


def _compile_scorer(
    check: Checker, spec: dict[str, Any], path: str, tiers: tuple[str, ...]
) -> Rule:
    """A learned scorer step: the artifact is read, checked against its sha256 and compiled.

    Imported here, not at module level: numpy loads only into servers whose config has a scorer.
    """
    from extproc.config.artifacts import ArtifactError, load_scorer, resolve, scorer_tiers_fit
    from extproc.core.scorer import ScorerStep

    name = _rule_name(check, spec.get("name", RuleKind.SCORER.value), join_path(path, "name"))
    model = check.string(spec["model"], join_path(path, "model"))
    sha256 = check.string(spec["sha256"], join_path(path, "sha256")).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise check.fail(join_path(path, "sha256"), "expected 64 hexadecimal digits")
    try:
        scorer = load_scorer(resolve(model, check.source), sha256)
    except ArtifactError as exc:
        raise check.fail(join_path(path, "model"), str(exc)) from None
    if tiers and not scorer_tiers_fit(scorer, tiers):
        raise check.fail(
            join_path(path, "model"),
            f"trained for tiers {', '.join(scorer.tiers)}; the config's are {', '.join(tiers)}",
        )
    if "threshold" in spec and "strong_share" in spec:
        raise check.fail(path, "give 'threshold' or 'strong_share', not both")
    thresholds = list(scorer.thresholds)
    share = None
    if "threshold" in spec:
        raw = spec["threshold"]
        where = join_path(path, "threshold")
        items = raw if isinstance(raw, list) else [raw] * scorer.boundaries
        if len(items) != scorer.boundaries:
            raise check.fail(where, f"expected one number or {scorer.boundaries} (per boundary)")
        thresholds = [_open_unit(check, v, where) for v in items]
    elif "strong_share" in spec:
        share = _open_unit(check, spec["strong_share"], join_path(path, "strong_share"))
        if not scorer.quantiles:
            raise check.fail(join_path(path, "strong_share"), "the artifact records no quantiles")
        thresholds[-1] = scorer.threshold_for_share(share)
    abstain = check.number(spec.get("abstain", 0.0), join_path(path, "abstain"))
    if abstain >= 0.5:
        raise check.fail(join_path(path, "abstain"), f"expected a number 0..0.5, got {abstain}")
    step = ScorerStep(scorer, tuple(thresholds), abstain=abstain, share=share)
    return Rule(name=name, kind=RuleKind.SCORER, tier=scorer.tiers[-1], scorer=step)


def _open_unit(check: Checker, value: object, path: str) -> float:
    number = check.number(value, path)
    if not 0.0 < number < 1.0:
        raise check.fail(path, f"expected a number strictly between 0 and 1, got {number}")
    return number


def _rule_name(check: Checker, value: object, path: str) -> str:
    name = check.string(value, path)
    if not name.isascii() or any(c.isspace() for c in name):
        raise check.fail(path, "expected ASCII without spaces")
    return name


def _compile_rule(check: Checker, spec: dict[str, Any], path: str, tiers: tuple[str, ...]) -> Rule:
    kinds = tuple(k.value for k in RuleKind)
    kind = RuleKind(check.choice(spec["kind"], join_path(path, "kind"), kinds))
    tier = check.attempt(lambda: _tier(check, spec["tier"], join_path(path, "tier"), tiers), "")
    name = check.attempt(
        lambda: _rule_name(check, spec.get("name", kind.value), join_path(path, "name")),
        kind.value,
    )
    scope = None
    if "text" in spec:
        scopes = tuple(s.value for s in TextScope)
        scope = TextScope(
            check.attempt(
                lambda: check.choice(spec["text"], join_path(path, "text"), scopes), "all"
            )
        )
    if kind is RuleKind.KEYWORD:
        for key in ("gt", "lt"):
            if key in spec:
                check.record(check.fail(join_path(path, key), "not allowed on a keyword rule"))
        words = check.sequence(spec.get("keywords"), join_path(path, "keywords"))
        before = len(check.errors)
        for index, word in enumerate(words):
            where = join_path(join_path(path, "keywords"), index)
            check.attempt(partial(_keyword, check, word, where), "")
        if (
            len(check.errors) > before
        ):  # a bad keyword cannot be compiled; the error is already recorded
            raise check.errors[-1]
        return Rule(name=name, kind=kind, tier=tier, matcher=KeywordMatcher(words), text=scope)
    if "keywords" in spec:
        check.record(check.fail(join_path(path, "keywords"), f"not allowed on a {kind.value} rule"))
    if "gt" not in spec and "lt" not in spec:
        raise check.fail(path, f"a {kind.value} rule needs 'gt' and/or 'lt'")
    gt = lt = None
    if "gt" in spec:
        gt = check.attempt(lambda: check.integer(spec["gt"], join_path(path, "gt")), None)
    if "lt" in spec:
        lt = check.attempt(lambda: check.integer(spec["lt"], join_path(path, "lt")), None)
    return Rule(name=name, kind=kind, tier=tier, gt=gt, lt=lt, text=scope)


def _keyword(check: Checker, word: object, path: str) -> str:
    text = check.string(word, path, empty=True)
    if not text.strip():
        raise check.fail(path, "empty keyword")
    if text != text.strip():
        raise check.fail(path, f"keyword {text!r} has leading or trailing whitespace")
    return text


def compile_canary(
    check: Checker, value: object, versions: tuple[str, ...], stable: str
) -> Canary | None:
    if value is None:
        return None
    spec = check.mapping(
        value, "canary", {"version", "weight", "key_header", "rollout"}, {"version"}
    )
    version = check.choice(spec["version"], "canary.version", versions)
    if version == stable:
        raise check.fail("canary.version", "must differ from the stable 'classifier'")
    weight = check.percent(spec.get("weight", 0), "canary.weight")
    key_header = check.string(spec.get("key_header", "x-user-id"), "canary.key_header").lower()
    rollout = _compile_rollout(check, spec.get("rollout"), "canary.rollout")
    return Canary(version=version, weight=weight, key_header=key_header, rollout=rollout)


_ROLLOUT_KEYS = {
    "prometheus",
    "steps",
    "step_interval_s",
    "check_interval_s",
    "min_requests",
    "volume_query",
    "triggers",
}
_TRIGGER_KEYS = {"query", "above", "window_s", "for_s"}


def _compile_rollout(check: Checker, value: object, path: str) -> Rollout:
    defaults = Rollout()
    if value is None:
        return defaults
    spec = check.mapping(value, path, _ROLLOUT_KEYS)
    prometheus = check.string(
        spec.get("prometheus", defaults.prometheus), join_path(path, "prometheus")
    )
    if not prometheus.startswith(("http://", "https://")):
        raise check.fail(
            join_path(path, "prometheus"), f"expected an http(s) URL, got {prometheus!r}"
        )
    steps_path = join_path(path, "steps")
    steps = tuple(
        check.percent(item, join_path(steps_path, index))
        for index, item in enumerate(check.sequence(spec.get("steps", [10, 50, 100]), steps_path))
    )
    if any(b <= a for a, b in itertools.pairwise(steps)) or steps[0] <= 0:
        raise check.fail(steps_path, "expected increasing percentages above 0")
    volume_query = check.string(
        spec.get("volume_query", defaults.volume_query), join_path(path, "volume_query")
    )
    return Rollout(
        prometheus=prometheus.rstrip("/"),
        steps=steps,
        step_interval_s=check.integer(
            spec.get("step_interval_s", defaults.step_interval_s),
            join_path(path, "step_interval_s"),
            minimum=1,
        ),
        check_interval_s=check.integer(
            spec.get("check_interval_s", defaults.check_interval_s),
            join_path(path, "check_interval_s"),
            minimum=1,
        ),
        min_requests=check.integer(
            spec.get("min_requests", defaults.min_requests), join_path(path, "min_requests")
        ),
        volume_query=volume_query,
        triggers=_compile_triggers(check, spec.get("triggers"), join_path(path, "triggers")),
    )


def _compile_triggers(check: Checker, value: object, path: str) -> tuple[Trigger, ...]:
    """A mapping by trigger name; a default trigger's fields may be overridden one by one,
    any other name needs `query` and `above`. A default trigger left out stays active."""
    known = {t.name: t for t in DEFAULT_TRIGGERS}
    if value is None:
        return DEFAULT_TRIGGERS
    spec = check.mapping(value, path, set(value) if isinstance(value, dict) else set())
    result = dict(known)
    for name, raw in spec.items():
        item_path = join_path(path, name)
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise check.fail(item_path, "expected letters, digits or '_'")
        if raw is False:
            result.pop(name, None)
            continue
        base = known.get(name)
        fields = check.mapping(raw, item_path, _TRIGGER_KEYS, set() if base else {"query", "above"})
        if base is None:
            base = Trigger(name=name, query="", above=0.0, window_s=300, for_s=300)
        query = check.string(fields.get("query", base.query), join_path(item_path, "query"))
        if "$version" not in query:
            raise check.fail(join_path(item_path, "query"), "must select the version with $version")
        result[name] = Trigger(
            name=name,
            query=query,
            above=check.number(fields.get("above", base.above), join_path(item_path, "above")),
            window_s=check.integer(
                fields.get("window_s", base.window_s), join_path(item_path, "window_s"), minimum=1
            ),
            for_s=check.integer(fields.get("for_s", base.for_s), join_path(item_path, "for_s")),
        )
    return tuple(result.values())
