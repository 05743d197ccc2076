"""The cascade config: YAML schema, strict validation, and the compiled immutable `Snapshot`.

Only the `Snapshot` reaches the hot path. Loading never half-succeeds: either every field is valid
and a new snapshot is built, or a `ConfigError` names the file, the field path and what was
expected.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
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
class Tier:
    name: str
    rank: int
    model: str
    price: Price
    backends: tuple[Backend, ...] = ()


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
class Canary:
    version: str
    weight: float  # percent of requests, 0..100
    key_header: str


@dataclass(frozen=True, slots=True)
class ServerSettings:
    paths: tuple[str, ...] = DEFAULT_PATHS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rewrite_model: bool = False


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
        raw=top,
    )


def _compile_tiers(check: _Checker, value: object) -> tuple[Tier, ...]:
    items = check.sequence(value, "tiers")
    tiers: list[Tier] = []
    for index, item in enumerate(items):
        path = _join("tiers", index)
        spec = check.mapping(item, path, {"name", "model", "price", "backends"}, {"name"})
        name = check.string(spec["name"], _join(path, "name"))
        if any(t.name == name for t in tiers):
            raise check.fail(_join(path, "name"), f"duplicate tier {name!r}")
        if not name.replace("_", "").replace("-", "").isalnum() or not name.isascii():
            raise check.fail(_join(path, "name"), "expected letters, digits, '-' or '_'")
        model = check.string(spec.get("model", ""), _join(path, "model"), empty=True)
        price = _compile_price(check, spec.get("price"), _join(path, "price"))
        backends = _compile_backends(check, spec.get("backends"), _join(path, "backends"), model)
        tiers.append(Tier(name=name, rank=index, model=model, price=price, backends=backends))
    return tuple(tiers)


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
    for index, item in enumerate(check.sequence(value, path)):
        item_path = _join(path, index)
        spec = check.mapping(item, item_path, {"address", "model", "weight", "name"}, {"address"})
        address = check.string(spec["address"], _join(item_path, "address"))
        host, port = _host_port(check, address, _join(item_path, "address"))
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
    spec = check.mapping(value, "canary", {"version", "weight", "key_header"}, {"version"})
    version = check.choice(spec["version"], "canary.version", versions)
    if version == stable:
        raise check.fail("canary.version", "must differ from the stable 'classifier'")
    weight = check.number(spec.get("weight", 0), "canary.weight")
    if weight > 100:
        raise check.fail("canary.weight", f"expected a percentage 0..100, got {weight}")
    key_header = check.string(spec.get("key_header", "x-user-id"), "canary.key_header").lower()
    return Canary(version=version, weight=weight, key_header=key_header)


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
    return EnvoySettings(
        listen=addresses["listen"], admin=addresses["admin"], ext_proc=tuple(endpoints), **numbers
    )
