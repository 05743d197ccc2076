"""The cascade config: YAML schema, strict validation, and the compiled immutable `Snapshot`.

Only the `Snapshot` reaches the hot path. Loading never half-succeeds: either every field is valid
and a new snapshot is built, or a `ConfigError` names the file, the field path and what was
expected.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from extproc.errors import ConfigError
from extproc.keywords import KeywordMatcher

DEFAULT_CONFIG = Path(__file__).with_name("defaults") / "cascade.yaml"
DEFAULT_PATHS = ("/v1/chat/completions",)
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class TextScope(enum.Enum):
    """Which message text a classifier version looks at."""

    ALL = "all"  # every message's text, joined with a space
    USER = "user"  # user messages only, joined with a space
    LAST_USER = "last_user"  # the last user message


class RuleKind(enum.Enum):
    KEYWORD = "keyword"
    CHARS = "chars"
    BYTES = "bytes"
    MESSAGES = "messages"


@dataclass(frozen=True, slots=True)
class Price:
    """What a tier costs: per million tokens, or per hour of reserved capacity."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_hour: float = 0.0


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream endpoint of a tier (used by `cascade render envoy` and the demo)."""

    address: str
    port: int
    model: str
    weight: int = 100
    name: str = ""


@dataclass(frozen=True, slots=True)
class Mirror:
    """Shadow a share of a tier's requests to another tier (Envoy discards the answers)."""

    tier: str
    percent: float  # 0..100, fractions allowed


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    rank: int
    model: str
    price: Price
    backends: tuple[Backend, ...] = ()
    #: where Envoy retries when this tier answers 503/429 or refuses connections
    fallback: str | None = None
    mirror: Mirror | None = None
    #: request header hashed to keep a user on one backend group (backend canary); "" = random
    sticky_header: str = "x-user-id"

    @property
    def backend_groups(self) -> tuple[tuple[str, tuple[Backend, ...]], ...]:
        """Backends grouped by `name`, in first-seen order (two or more = a backend canary)."""
        groups: dict[str, list[Backend]] = {}
        for backend in self.backends:
            groups.setdefault(backend.name, []).append(backend)
        return tuple((name, tuple(members)) for name, members in groups.items())


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: RuleKind
    tier: str
    gt: int | None = None
    lt: int | None = None
    matcher: KeywordMatcher | None = None

    def describe(self) -> str:
        """A short ASCII description of the condition, e.g. `chars>500`."""
        parts = []
        if self.gt is not None:
            parts.append(f"{self.kind.value}>{self.gt}")
        if self.lt is not None:
            parts.append(f"{self.kind.value}<{self.lt}")
        return "&".join(parts) or self.kind.value


@dataclass(frozen=True, slots=True)
class Classifier:
    """One compiled classifier version: ordered rules, first match wins, else `default`."""

    version: str
    text: TextScope
    default: str
    rules: tuple[Rule, ...]
    disabled_rules: tuple[str, ...] = ()


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


@dataclass(frozen=True, slots=True)
class ServerSettings:
    paths: tuple[str, ...] = DEFAULT_PATHS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rewrite_model: bool = False


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Envoy's retry policy on every tier route (docs/resilience.md)."""

    num_retries: int = 2
    retry_on: tuple[str, ...] = ("5xx", "reset", "connect-failure", "retriable-status-codes")
    status_codes: tuple[int, ...] = (429, 503)
    backoff_base_ms: int = 100
    backoff_max_ms: int = 1000
    #: a `Retry-After` up to this long is waited for; 0 = ignore Retry-After
    retry_after_max_ms: int = 5000
    #: 0 = no per-try limit (the route timeout bounds all tries): must exceed the longest
    #: non-streamed generation, since it runs until the response headers arrive
    per_try_timeout_s: int = 0
    #: circuit breaker: concurrent retries per cluster (Envoy's default is 3)
    max_concurrent: int = 100
    #: failed attempts on a tier before its fallback tier takes over
    attempts_per_tier: int = 1


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    """Passive health: eject a backend after consecutive 5xx / connect failures."""

    enabled: bool = True
    consecutive_5xx: int = 3
    interval_ms: int = 5000
    base_ejection_ms: int = 30000
    max_ejection_percent: int = 100


@dataclass(frozen=True, slots=True)
class ExtProcCanary:
    """A second classifier deployment taking `percent` of the streams (Envoy-level canary)."""

    addresses: tuple[str, ...]
    percent: float
    #: `route`: runtime-fraction route, re-weighted live through the admin runtime;
    #: `endpoints`: endpoint weights in one ext_proc cluster
    mode: str = "route"
    runtime_key: str = "cascade.classifier_canary_percent"
    #: a request carrying this header (any value) always uses the canary deployment (route mode)
    pin_header: str = "x-classifier-canary"


@dataclass(frozen=True, slots=True)
class EnvoySettings:
    """What `cascade render envoy` needs beyond the tiers."""

    listen: str = "0.0.0.0:10000"
    admin: str = "127.0.0.1:9901"
    #: addresses of `cascade serve` (several = endpoints of one ext_proc cluster)
    ext_proc: tuple[str, ...] = ("127.0.0.1:50051",)
    message_timeout_ms: int = 500
    route_timeout_s: int = 300
    max_request_bytes: int = 16 * 1024 * 1024
    connect_timeout_ms: int = 1000
    retries: RetrySettings = field(default_factory=RetrySettings)
    outlier_detection: OutlierSettings = field(default_factory=OutlierSettings)
    ext_proc_canary: ExtProcCanary | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable, compiled configuration. One per stream, read once."""

    source: str
    digest: str
    tiers: tuple[Tier, ...]
    default_tier: str
    stable: str
    canary: Canary | None
    classifiers: Mapping[str, Classifier]
    server: ServerSettings
    envoy: EnvoySettings = field(default_factory=EnvoySettings)
    telemetry: TelemetrySettings = field(default_factory=lambda: TelemetrySettings())  # noqa: PLW0108 (defined below)
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def tier(self, name: str) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)

    @property
    def top_tier(self) -> str:
        return self.tiers[-1].name


# ---------------------------------------------------------------------------------------------
# validation helpers: each takes the value and its field path, returns it typed or raises


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(self.source, path, message)

    def mapping(
        self,
        value: object,
        path: str,
        allowed: set[str],
        required: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_type_name(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, got {key!r}")
            if key not in allowed:
                raise self.fail(
                    _join(path, key), f"unknown key; expected one of: {', '.join(sorted(allowed))}"
                )
        for key in sorted(required):
            if key not in value:
                raise self.fail(_join(path, key), "is required")
        return value

    def string(self, value: object, path: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {_type_name(value)}")
        if not empty and not value.strip():
            raise self.fail(path, "expected a non-empty string")
        return value

    def integer(self, value: object, path: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {_type_name(value)}")
        if value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}, got {value}")
        return value

    def number(self, value: object, path: str, *, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, got {_type_name(value)}")
        if value < minimum:
            raise self.fail(path, f"expected a number >= {minimum}, got {value}")
        return float(value)

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_type_name(value)}")
        return value

    def sequence(self, value: object, path: str, *, empty: bool = False) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_type_name(value)}")
        if not empty and not value:
            raise self.fail(path, "expected a non-empty list")
        return value

    def choice(self, value: object, path: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, path)
        if text not in choices:
            raise self.fail(path, f"expected one of {', '.join(choices)}, got {text!r}")
        return text


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------------------------
# loading and compiling

_TOP_KEYS = {
    "schema",
    "tiers",
    "default_tier",
    "classifier",
    "canary",
    "classifiers",
    "server",
    "envoy",
    "telemetry",
}


def load_snapshot(path: str | Path) -> Snapshot:
    """Read, validate and compile a config file."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror or exc}") from exc
    return compile_config(data, source)


def compile_config(data: bytes | str, source: str = "<config>") -> Snapshot:
    """Validate and compile config text (YAML) into a `Snapshot`."""
    raw_bytes = data.encode("utf-8") if isinstance(data, str) else data
    try:
        document = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    return compile_document(document, source, hashlib.sha256(raw_bytes).hexdigest()[:12])


def compile_document(document: object, source: str, digest: str = "") -> Snapshot:
    check = _Checker(source)
    top = check.mapping(document, "", _TOP_KEYS, {"tiers", "classifiers", "classifier"})
    if "schema" in top and top["schema"] != 1:
        raise check.fail("schema", f"unsupported schema {top['schema']!r}; expected 1")

    tiers = _compile_tiers(check, top["tiers"])
    names = tuple(t.name for t in tiers)
    default_tier = check.choice(top.get("default_tier", names[0]), "default_tier", names)

    raw_classifiers = check.mapping(top["classifiers"], "classifiers", set(top["classifiers"]))
    if not raw_classifiers:
        raise check.fail("classifiers", "expected at least one classifier version")
    classifiers = {
        check.string(version, "classifiers"): _compile_classifier(
            check, str(version), spec, _join("classifiers", str(version)), names
        )
        for version, spec in raw_classifiers.items()
    }
    versions = tuple(classifiers)
    stable = check.choice(top["classifier"], "classifier", versions)
    canary = _compile_canary(check, top.get("canary"), versions, stable)
    server = _compile_server(check, top.get("server"))
    envoy = _compile_envoy(check, top.get("envoy"))
    telemetry = _compile_telemetry(check, top.get("telemetry"))
    return Snapshot(
        source=source,
        digest=digest,
        tiers=tiers,
        default_tier=default_tier,
        stable=stable,
        canary=canary,
        classifiers=classifiers,
        server=server,
        envoy=envoy,
        telemetry=telemetry,
        raw=top,
    )


_TIER_KEYS = {"name", "model", "price", "backends", "fallback", "mirror", "sticky_header"}


def _compile_tiers(check: _Checker, value: object) -> tuple[Tier, ...]:
    items = check.sequence(value, "tiers")
    tiers: list[Tier] = []
    for index, item in enumerate(items):
        path = _join("tiers", index)
        spec = check.mapping(item, path, _TIER_KEYS, {"name"})
        name = check.string(spec["name"], _join(path, "name"))
        if any(t.name == name for t in tiers):
            raise check.fail(_join(path, "name"), f"duplicate tier {name!r}")
        if not name.replace("_", "").replace("-", "").isalnum() or not name.isascii():
            raise check.fail(_join(path, "name"), "expected letters, digits, '-' or '_'")
        model = check.string(spec.get("model", ""), _join(path, "model"), empty=True)
        price = _compile_price(check, spec.get("price"), _join(path, "price"))
        backends = _compile_backends(check, spec.get("backends"), _join(path, "backends"), model)
        sticky = check.string(
            spec.get("sticky_header", "x-user-id"), _join(path, "sticky_header"), empty=True
        )
        tiers.append(
            Tier(
                name=name,
                rank=index,
                model=model,
                price=price,
                backends=backends,
                sticky_header=sticky.strip().lower(),
            )
        )
    names = tuple(t.name for t in tiers)
    for index, item in enumerate(items):
        tiers[index] = _link_tier(check, tiers[index], item, _join("tiers", index), names)
    _check_fallback_cycles(check, tiers)
    return tuple(tiers)


def _link_tier(
    check: _Checker, tier: Tier, spec: dict[str, Any], path: str, names: tuple[str, ...]
) -> Tier:
    """`fallback` and `mirror` name other tiers: checked once every tier is known."""
    fallback = None
    if "fallback" in spec:
        fallback = check.choice(spec["fallback"], _join(path, "fallback"), names)
        if fallback == tier.name:
            raise check.fail(_join(path, "fallback"), "a tier cannot fall back to itself")
    mirror = None
    if "mirror" in spec:
        mirror_path = _join(path, "mirror")
        raw = check.mapping(spec["mirror"], mirror_path, {"tier", "percent"}, {"tier", "percent"})
        target = check.choice(raw["tier"], _join(mirror_path, "tier"), names)
        if target == tier.name:
            raise check.fail(_join(mirror_path, "tier"), "a tier cannot mirror to itself")
        percent = check.number(raw["percent"], _join(mirror_path, "percent"))
        if percent > 100:
            raise check.fail(
                _join(mirror_path, "percent"), f"expected a percentage 0..100, got {percent}"
            )
        mirror = Mirror(tier=target, percent=percent)
    if fallback is None and mirror is None:
        return tier
    return replace(tier, fallback=fallback, mirror=mirror)


def _check_fallback_cycles(check: _Checker, tiers: list[Tier]) -> None:
    by_name = {t.name: t for t in tiers}
    for index, tier in enumerate(tiers):
        seen = [tier.name]
        current = tier.fallback
        while current is not None:
            if current in seen:
                chain = " -> ".join([*seen, current])
                raise check.fail(_join(_join("tiers", index), "fallback"), f"cycle: {chain}")
            seen.append(current)
            current = by_name[current].fallback


def fallback_chain(snapshot: Snapshot, tier: str) -> tuple[str, ...]:
    """The tiers a request decided for `tier` may be served by, in order (itself first)."""
    chain = [tier]
    current = snapshot.tier(tier).fallback
    while current is not None and current not in chain:
        chain.append(current)
        current = snapshot.tier(current).fallback
    return tuple(chain)


def _compile_price(check: _Checker, value: object, path: str) -> Price:
    if value is None:
        return Price()
    spec = check.mapping(value, path, {"input_per_mtok", "output_per_mtok", "per_hour"})
    return Price(
        **{key: check.number(spec[key], _join(path, key)) for key in spec},
    )


def _compile_backends(
    check: _Checker, value: object, path: str, tier_model: str
) -> tuple[Backend, ...]:
    if value is None:
        return ()
    backends: list[Backend] = []
    named = 0
    for index, item in enumerate(check.sequence(value, path)):
        item_path = _join(path, index)
        spec = check.mapping(item, item_path, {"address", "model", "weight", "name"}, {"address"})
        address = check.string(spec["address"], _join(item_path, "address"))
        host, port = _host_port(check, address, _join(item_path, "address"))
        if "name" in spec:
            named += 1
            label = check.string(spec["name"], _join(item_path, "name"))
            if not label.isascii() or not label.replace("_", "").replace("-", "").isalnum():
                raise check.fail(_join(item_path, "name"), "expected letters, digits, '-' or '_'")
        elif named:
            raise check.fail(_join(item_path, "name"), "name every backend of the tier, or none")
        backends.append(
            Backend(
                address=host,
                port=port,
                model=check.string(
                    spec.get("model", tier_model), _join(item_path, "model"), empty=True
                ),
                weight=check.integer(
                    spec.get("weight", 100), _join(item_path, "weight"), minimum=1
                ),
                name=check.string(spec.get("name", ""), _join(item_path, "name"), empty=True),
            )
        )
    if named and named != len(backends):
        raise check.fail(path, "name every backend of the tier, or none")
    return tuple(backends)


_RULE_KEYS = {"name", "kind", "tier", "keywords", "gt", "lt", "enabled"}


def _compile_classifier(
    check: _Checker, version: str, value: object, path: str, tiers: tuple[str, ...]
) -> Classifier:
    spec = check.mapping(value, path, {"text", "default", "rules", "description"}, {"default"})
    if not version.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise check.fail(path, "classifier version must be letters, digits, '.', '-' or '_'")
    if "description" in spec:
        check.string(spec["description"], _join(path, "description"), empty=True)
    scope = TextScope(
        check.choice(
            spec.get("text", "all"), _join(path, "text"), tuple(s.value for s in TextScope)
        )
    )
    default = check.choice(spec["default"], _join(path, "default"), tiers)
    rules: list[Rule] = []
    disabled: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(
        check.sequence(spec.get("rules", []), _join(path, "rules"), empty=True)
    ):
        rule_path = _join(_join(path, "rules"), index)
        rule_spec = check.mapping(item, rule_path, _RULE_KEYS, {"kind", "tier"})
        rule = _compile_rule(check, rule_spec, rule_path, tiers)
        if rule.name in seen:
            raise check.fail(_join(rule_path, "name"), f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        if check.boolean(rule_spec.get("enabled", True), _join(rule_path, "enabled")):
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


def _compile_rule(check: _Checker, spec: dict[str, Any], path: str, tiers: tuple[str, ...]) -> Rule:
    kind = RuleKind(
        check.choice(spec["kind"], _join(path, "kind"), tuple(k.value for k in RuleKind))
    )
    tier = check.choice(spec["tier"], _join(path, "tier"), tiers)
    name = check.string(spec.get("name", kind.value), _join(path, "name"))
    if not name.isascii() or any(c.isspace() for c in name):
        raise check.fail(_join(path, "name"), "expected ASCII without spaces")
    if kind is RuleKind.KEYWORD:
        for key in ("gt", "lt"):
            if key in spec:
                raise check.fail(_join(path, key), "not allowed on a keyword rule")
        words = check.sequence(spec.get("keywords"), _join(path, "keywords"))
        for index, word in enumerate(words):
            text = check.string(word, _join(_join(path, "keywords"), index), empty=True)
            if not text.strip():
                raise check.fail(_join(_join(path, "keywords"), index), "empty keyword")
            if text != text.strip():
                raise check.fail(
                    _join(_join(path, "keywords"), index),
                    f"keyword {text!r} has leading or trailing whitespace",
                )
        return Rule(name=name, kind=kind, tier=tier, matcher=KeywordMatcher(words))
    if "keywords" in spec:
        raise check.fail(_join(path, "keywords"), f"not allowed on a {kind.value} rule")
    if "gt" not in spec and "lt" not in spec:
        raise check.fail(path, f"a {kind.value} rule needs 'gt' and/or 'lt'")
    gt = check.integer(spec["gt"], _join(path, "gt")) if "gt" in spec else None
    lt = check.integer(spec["lt"], _join(path, "lt")) if "lt" in spec else None
    return Rule(name=name, kind=kind, tier=tier, gt=gt, lt=lt)


def _compile_canary(
    check: _Checker, value: object, versions: tuple[str, ...], stable: str
) -> Canary | None:
    if value is None:
        return None
    spec = check.mapping(
        value, "canary", {"version", "weight", "key_header", "rollout"}, {"version"}
    )
    version = check.choice(spec["version"], "canary.version", versions)
    if version == stable:
        raise check.fail("canary.version", "must differ from the stable 'classifier'")
    weight = _percent(check, spec.get("weight", 0), "canary.weight")
    key_header = check.string(spec.get("key_header", "x-user-id"), "canary.key_header").lower()
    rollout = _compile_rollout(check, spec.get("rollout"), "canary.rollout")
    return Canary(version=version, weight=weight, key_header=key_header, rollout=rollout)


def _percent(check: _Checker, value: object, path: str) -> float:
    number = check.number(value, path)
    if number > 100:
        raise check.fail(path, f"expected a percentage 0..100, got {number}")
    return number


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


def _compile_rollout(check: _Checker, value: object, path: str) -> Rollout:
    defaults = Rollout()
    if value is None:
        return defaults
    spec = check.mapping(value, path, _ROLLOUT_KEYS)
    prometheus = check.string(
        spec.get("prometheus", defaults.prometheus), _join(path, "prometheus")
    )
    if not prometheus.startswith(("http://", "https://")):
        raise check.fail(_join(path, "prometheus"), f"expected an http(s) URL, got {prometheus!r}")
    steps_path = _join(path, "steps")
    steps = tuple(
        _percent(check, item, _join(steps_path, index))
        for index, item in enumerate(check.sequence(spec.get("steps", [10, 50, 100]), steps_path))
    )
    if any(b <= a for a, b in itertools.pairwise(steps)) or steps[0] <= 0:
        raise check.fail(steps_path, "expected increasing percentages above 0")
    volume_query = check.string(
        spec.get("volume_query", defaults.volume_query), _join(path, "volume_query")
    )
    return Rollout(
        prometheus=prometheus.rstrip("/"),
        steps=steps,
        step_interval_s=check.integer(
            spec.get("step_interval_s", defaults.step_interval_s),
            _join(path, "step_interval_s"),
            minimum=1,
        ),
        check_interval_s=check.integer(
            spec.get("check_interval_s", defaults.check_interval_s),
            _join(path, "check_interval_s"),
            minimum=1,
        ),
        min_requests=check.integer(
            spec.get("min_requests", defaults.min_requests), _join(path, "min_requests")
        ),
        volume_query=volume_query,
        triggers=_compile_triggers(check, spec.get("triggers"), _join(path, "triggers")),
    )


def _compile_triggers(check: _Checker, value: object, path: str) -> tuple[Trigger, ...]:
    """A mapping by trigger name; a default trigger's fields may be overridden one by one,
    any other name needs `query` and `above`. A default trigger left out stays active."""
    known = {t.name: t for t in DEFAULT_TRIGGERS}
    if value is None:
        return DEFAULT_TRIGGERS
    spec = check.mapping(value, path, set(value) if isinstance(value, dict) else set())
    result = dict(known)
    for name, raw in spec.items():
        item_path = _join(path, name)
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise check.fail(item_path, "expected letters, digits or '_'")
        if raw is False:
            result.pop(name, None)
            continue
        base = known.get(name)
        fields = check.mapping(raw, item_path, _TRIGGER_KEYS, set() if base else {"query", "above"})
        if base is None:
            base = Trigger(name=name, query="", above=0.0, window_s=300, for_s=300)
        query = check.string(fields.get("query", base.query), _join(item_path, "query"))
        if "$version" not in query:
            raise check.fail(_join(item_path, "query"), "must select the version with $version")
        result[name] = Trigger(
            name=name,
            query=query,
            above=check.number(fields.get("above", base.above), _join(item_path, "above")),
            window_s=check.integer(
                fields.get("window_s", base.window_s), _join(item_path, "window_s"), minimum=1
            ),
            for_s=check.integer(fields.get("for_s", base.for_s), _join(item_path, "for_s")),
        )
    return tuple(result.values())


def _compile_server(check: _Checker, value: object) -> ServerSettings:
    if value is None:
        return ServerSettings()
    spec = check.mapping(value, "server", {"paths", "max_body_bytes", "rewrite_model"})
    paths = tuple(
        check.string(p, _join("server.paths", i))
        for i, p in enumerate(
            check.sequence(spec.get("paths", list(DEFAULT_PATHS)), "server.paths")
        )
    )
    for index, item in enumerate(paths):
        if not item.startswith("/"):
            raise check.fail(
                _join("server.paths", index), f"expected a path starting with '/', got {item!r}"
            )
    return ServerSettings(
        paths=paths,
        max_body_bytes=check.integer(
            spec.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES), "server.max_body_bytes", minimum=1
        ),
        rewrite_model=check.boolean(spec.get("rewrite_model", False), "server.rewrite_model"),
    )


def _host_port(
    check: _Checker, value: str, path: str, *, allow_zero: bool = False
) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    low = 0 if allow_zero else 1
    if not sep or not host or not port_text.isdigit() or not low <= int(port_text) < 65536:
        raise check.fail(path, f"expected host:port, got {value!r}")
    return host, int(port_text)


_ENVOY_KEYS = {
    "listen",
    "admin",
    "ext_proc",
    "message_timeout_ms",
    "route_timeout_s",
    "max_request_bytes",
    "connect_timeout_ms",
    "retries",
    "outlier_detection",
    "ext_proc_canary",
}


def _compile_envoy(check: _Checker, value: object) -> EnvoySettings:
    if value is None:
        return EnvoySettings()
    spec = check.mapping(value, "envoy", _ENVOY_KEYS)
    defaults = EnvoySettings()
    addresses: dict[str, str] = {}
    for key in ("listen", "admin"):
        text = check.string(spec.get(key, getattr(defaults, key)), f"envoy.{key}")
        _host_port(check, text, f"envoy.{key}", allow_zero=True)
        addresses[key] = text
    ext_proc = spec.get("ext_proc", list(defaults.ext_proc))
    if isinstance(ext_proc, str):
        ext_proc = [ext_proc]
    endpoints = []
    for index, item in enumerate(check.sequence(ext_proc, "envoy.ext_proc")):
        text = check.string(item, _join("envoy.ext_proc", index))
        _host_port(check, text, _join("envoy.ext_proc", index))
        endpoints.append(text)
    numbers = {
        key: check.integer(spec.get(key, getattr(defaults, key)), f"envoy.{key}", minimum=1)
        for key in (
            "message_timeout_ms",
            "route_timeout_s",
            "max_request_bytes",
            "connect_timeout_ms",
        )
    }
    retries = _compile_retries(check, spec.get("retries"), "envoy.retries")
    if retries.per_try_timeout_s > numbers["route_timeout_s"]:
        raise check.fail(
            "envoy.retries.per_try_timeout_s",
            f"longer than envoy.route_timeout_s ({numbers['route_timeout_s']})",
        )
    return EnvoySettings(
        listen=addresses["listen"],
        admin=addresses["admin"],
        ext_proc=tuple(endpoints),
        retries=retries,
        outlier_detection=_compile_outlier(
            check, spec.get("outlier_detection"), "envoy.outlier_detection"
        ),
        ext_proc_canary=_compile_ext_proc_canary(
            check, spec.get("ext_proc_canary"), "envoy.ext_proc_canary", endpoints
        ),
        **numbers,
    )


#: Envoy's `retry_on` conditions that make sense for model backends.
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "http3-post-connect-failure",
)


def _compile_retries(check: _Checker, value: object, path: str) -> RetrySettings:
    defaults = RetrySettings()
    if value is None:
        return defaults
    spec = check.mapping(value, path, {f.name for f in fields(RetrySettings)})
    on_path = _join(path, "retry_on")
    retry_on = tuple(
        check.choice(item, _join(on_path, index), RETRY_ON)
        for index, item in enumerate(
            check.sequence(spec.get("retry_on", list(defaults.retry_on)), on_path)
        )
    )
    codes_path = _join(path, "status_codes")
    codes = tuple(
        check.integer(item, _join(codes_path, index), minimum=400)
        for index, item in enumerate(
            check.sequence(spec.get("status_codes", list(defaults.status_codes)), codes_path)
        )
    )
    for index, code in enumerate(codes):
        if code > 599:
            raise check.fail(_join(codes_path, index), f"expected a status 400..599, got {code}")
    if codes and "retriable-status-codes" not in retry_on:
        raise check.fail(on_path, "status_codes need 'retriable-status-codes' in retry_on")

    def number(key: str, minimum: int = 0) -> int:
        return check.integer(
            spec.get(key, getattr(defaults, key)), _join(path, key), minimum=minimum
        )

    settings = RetrySettings(
        num_retries=number("num_retries"),
        retry_on=retry_on,
        status_codes=codes,
        backoff_base_ms=number("backoff_base_ms", 1),
        backoff_max_ms=number("backoff_max_ms", 1),
        retry_after_max_ms=number("retry_after_max_ms"),
        per_try_timeout_s=number("per_try_timeout_s"),
        max_concurrent=number("max_concurrent", 1),
        attempts_per_tier=number("attempts_per_tier", 1),
    )
    if settings.backoff_max_ms < settings.backoff_base_ms:
        raise check.fail(_join(path, "backoff_max_ms"), "must be >= backoff_base_ms")
    return settings


def _compile_outlier(check: _Checker, value: object, path: str) -> OutlierSettings:
    defaults = OutlierSettings()
    if value is None:
        return defaults
    spec = check.mapping(value, path, {f.name for f in fields(OutlierSettings)})
    numbers = {
        key: check.integer(spec.get(key, getattr(defaults, key)), _join(path, key), minimum=1)
        for key in ("consecutive_5xx", "interval_ms", "base_ejection_ms", "max_ejection_percent")
    }
    if numbers["max_ejection_percent"] > 100:
        raise check.fail(_join(path, "max_ejection_percent"), "expected a percentage 1..100")
    enabled = check.boolean(spec.get("enabled", True), _join(path, "enabled"))
    return OutlierSettings(enabled=enabled, **numbers)


def _compile_ext_proc_canary(
    check: _Checker, value: object, path: str, stable: list[str]
) -> ExtProcCanary | None:
    if value is None:
        return None
    spec = check.mapping(
        value,
        path,
        {"addresses", "percent", "mode", "runtime_key", "pin_header"},
        {"addresses", "percent"},
    )
    addresses = []
    for index, item in enumerate(check.sequence(spec["addresses"], _join(path, "addresses"))):
        item_path = _join(_join(path, "addresses"), index)
        text = check.string(item, item_path)
        _host_port(check, text, item_path)
        if text in stable:
            raise check.fail(item_path, f"{text} is also in envoy.ext_proc")
        addresses.append(text)
    defaults = ExtProcCanary(addresses=(), percent=0)
    runtime_key = check.string(
        spec.get("runtime_key", defaults.runtime_key), _join(path, "runtime_key")
    )
    if any(c.isspace() for c in runtime_key):
        raise check.fail(_join(path, "runtime_key"), "expected no whitespace")
    pin_header = check.string(
        spec.get("pin_header", defaults.pin_header), _join(path, "pin_header")
    ).lower()
    if pin_header.startswith("x-cascade-"):
        raise check.fail(
            _join(path, "pin_header"),
            "x-cascade-* headers from clients are removed before routing; pick another name",
        )
    return ExtProcCanary(
        addresses=tuple(addresses),
        percent=_percent(check, spec["percent"], _join(path, "percent")),
        mode=check.choice(
            spec.get("mode", defaults.mode), _join(path, "mode"), ("route", "endpoints")
        ),
        runtime_key=runtime_key,
        pin_header=pin_header,
    )


# ---------------------------------------------------------------------------------------------
# telemetry: what the server observes and where it keeps it (docs/observability.md)


@dataclass(frozen=True, slots=True)
class DecisionLogSettings:
    """The JSON-lines decision log: one record per request, rotated by size."""

    path: str
    max_bytes: int = 100 * 1024 * 1024
    #: rotated files kept beside the live one (`PATH.1` ... `PATH.N`)
    backups: int = 5
    #: records waiting for the writer thread; more are dropped and counted
    queue_size: int = 10_000


@dataclass(frozen=True, slots=True)
class RetryPatternSettings:
    """Retry pattern: a similar request from the same user soon after a weak-tier answer."""

    enabled: bool = True
    similarity: float = 0.8
    window_s: int = 300
    #: recent requests remembered per user
    per_user: int = 8


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    """How feedback on a request turns into a misroute suspicion."""

    #: a strong answer with a non-negative score to a prompt at most this long is a suspected
    #: false positive (when it was also cheap, see `cheap_output_tokens`)
    short_prompt_chars: int = 200
    cheap_output_tokens: int = 256


@dataclass(frozen=True, slots=True)
class StateSettings:
    """Where retry-pattern and feedback state lives: this process, or Redis for replicas."""

    backend: str = "memory"
    url: str = ""
    #: memory backend bounds (least recently used entries are dropped first)
    max_users: int = 10_000
    max_requests: int = 50_000
    #: how long a request stays known to `SubmitFeedback`
    request_ttl_s: int = 86_400
    #: Redis command timeout; state calls never block an ext_proc answer
    timeout_ms: int = 200
    key_prefix: str = "cascade:"


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    #: `cascade render envoy`: let the server see response bodies (STREAMED, each chunk answered
    #: at once) for TTFT, tokens, cost and the tier that really served
    response_processing: bool = True
    #: request headers identifying a user (first present wins); only a hash is kept
    user_key_headers: tuple[str, ...] = ("x-user-id",)
    #: prompt text on spans and in the decision log, after `redact`
    capture_prompts: bool = False
    #: `builtin` (e-mail addresses, key-like tokens, long digit runs), `none`, or
    #: `module:function` taking and returning a string
    redact: str = "builtin"
    #: output tokens per second at full use, to spread `per_hour` prices over requests
    tokens_per_second: float = 1000.0
    #: a non-streamed JSON answer is kept up to this size to read its `usage`
    max_response_bytes: int = 1024 * 1024
    decision_log: DecisionLogSettings | None = None
    retry: RetryPatternSettings = field(default_factory=RetryPatternSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    state: StateSettings = field(default_factory=StateSettings)


_TELEMETRY_KEYS = {
    "response_processing",
    "user_key_headers",
    "capture_prompts",
    "redact",
    "tokens_per_second",
    "max_response_bytes",
    "decision_log",
    "retry",
    "feedback",
    "state",
}


def _compile_telemetry(check: _Checker, value: object) -> TelemetrySettings:
    if value is None:
        return TelemetrySettings()
    spec = check.mapping(value, "telemetry", _TELEMETRY_KEYS)
    defaults = TelemetrySettings()
    headers = spec.get("user_key_headers", list(defaults.user_key_headers))
    if isinstance(headers, str):
        headers = [headers]
    names = tuple(
        check.string(item, _join("telemetry.user_key_headers", index)).lower()
        for index, item in enumerate(
            check.sequence(headers, "telemetry.user_key_headers", empty=True)
        )
    )
    redact = check.string(spec.get("redact", defaults.redact), "telemetry.redact")
    if redact not in ("builtin", "none"):
        module, sep, attribute = redact.partition(":")
        if not sep or not module or not attribute:
            raise check.fail(
                "telemetry.redact", f"expected builtin, none or module:function, got {redact!r}"
            )
    tokens_per_second = check.number(
        spec.get("tokens_per_second", defaults.tokens_per_second), "telemetry.tokens_per_second"
    )
    if tokens_per_second <= 0:
        raise check.fail("telemetry.tokens_per_second", "expected a number > 0")
    return TelemetrySettings(
        response_processing=check.boolean(
            spec.get("response_processing", defaults.response_processing),
            "telemetry.response_processing",
        ),
        user_key_headers=names,
        capture_prompts=check.boolean(
            spec.get("capture_prompts", defaults.capture_prompts), "telemetry.capture_prompts"
        ),
        redact=redact,
        tokens_per_second=tokens_per_second,
        max_response_bytes=check.integer(
            spec.get("max_response_bytes", defaults.max_response_bytes),
            "telemetry.max_response_bytes",
            minimum=1024,
        ),
        decision_log=_compile_decision_log(check, spec.get("decision_log")),
        retry=_compile_retry_pattern(check, spec.get("retry")),
        feedback=_compile_feedback(check, spec.get("feedback")),
        state=_compile_state(check, spec.get("state")),
    )


def _compile_decision_log(check: _Checker, value: object) -> DecisionLogSettings | None:
    if value is None:
        return None
    path = "telemetry.decision_log"
    spec = check.mapping(value, path, {"path", "max_bytes", "backups", "queue_size"}, {"path"})
    defaults = DecisionLogSettings(path="")
    return DecisionLogSettings(
        path=check.string(spec["path"], _join(path, "path")),
        max_bytes=check.integer(
            spec.get("max_bytes", defaults.max_bytes), _join(path, "max_bytes"), minimum=1024
        ),
        backups=check.integer(spec.get("backups", defaults.backups), _join(path, "backups")),
        queue_size=check.integer(
            spec.get("queue_size", defaults.queue_size), _join(path, "queue_size"), minimum=1
        ),
    )


def _compile_retry_pattern(check: _Checker, value: object) -> RetryPatternSettings:
    if value is None:
        return RetryPatternSettings()
    path = "telemetry.retry"
    spec = check.mapping(value, path, {"enabled", "similarity", "window_s", "per_user"})
    defaults = RetryPatternSettings()
    similarity = check.number(
        spec.get("similarity", defaults.similarity), _join(path, "similarity")
    )
    if not 0 < similarity <= 1:
        raise check.fail(
            _join(path, "similarity"), f"expected 0 < similarity <= 1, got {similarity}"
        )
    return RetryPatternSettings(
        enabled=check.boolean(spec.get("enabled", defaults.enabled), _join(path, "enabled")),
        similarity=similarity,
        window_s=check.integer(
            spec.get("window_s", defaults.window_s), _join(path, "window_s"), minimum=1
        ),
        per_user=check.integer(
            spec.get("per_user", defaults.per_user), _join(path, "per_user"), minimum=1
        ),
    )


def _compile_feedback(check: _Checker, value: object) -> FeedbackSettings:
    if value is None:
        return FeedbackSettings()
    path = "telemetry.feedback"
    spec = check.mapping(value, path, {"short_prompt_chars", "cheap_output_tokens"})
    defaults = FeedbackSettings()
    return FeedbackSettings(
        **{
            key: check.integer(spec.get(key, getattr(defaults, key)), _join(path, key))
            for key in ("short_prompt_chars", "cheap_output_tokens")
        }
    )


_STATE_KEYS = {
    "backend",
    "url",
    "max_users",
    "max_requests",
    "request_ttl_s",
    "timeout_ms",
    "key_prefix",
}


def _compile_state(check: _Checker, value: object) -> StateSettings:
    if value is None:
        return StateSettings()
    path = "telemetry.state"
    spec = check.mapping(value, path, _STATE_KEYS)
    defaults = StateSettings()
    backend = check.choice(
        spec.get("backend", defaults.backend), _join(path, "backend"), ("memory", "redis")
    )
    url = check.string(spec.get("url", ""), _join(path, "url"), empty=True)
    if backend == "redis" and not url.startswith(("redis://", "rediss://", "unix://")):
        raise check.fail(
            _join(path, "url"), f"the redis backend needs a redis:// or unix:// URL, got {url!r}"
        )
    numbers = {
        key: check.integer(spec.get(key, getattr(defaults, key)), _join(path, key), minimum=1)
        for key in ("max_users", "max_requests", "request_ttl_s", "timeout_ms")
    }
    return StateSettings(
        backend=backend,
        url=url,
        key_prefix=check.string(
            spec.get("key_prefix", defaults.key_prefix), _join(path, "key_prefix")
        ),
        **numbers,
    )
