"""The cascade config: YAML schema, strict validation, and the compiled immutable `Snapshot`.

Only the `Snapshot` reaches the hot path. Loading never half-succeeds: either every field is valid
and a new snapshot is built, or a `ConfigError` names the file, the field path and what was
expected.

This module holds the top level (the `Snapshot`, loading, the `server:` section) and re-exports
the sections, each in its own module: `config_tiers`, `config_classifiers` (with the canary),
`config_envoy` and `config_telemetry`; `config_check` has the validation helpers they share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from extproc.config.cache import CacheSettings, compile_cache
from extproc.config.capture import CaptureSettings, compile_capture
from extproc.config.check import Checker, join_path
from extproc.config.classifiers import (
    DEFAULT_TRIGGERS,
    DEFAULT_VOLUME_QUERY,
    Canary,
    Rollout,
    Trigger,
    compile_canary,
    compile_classifier,
)
from extproc.config.envoy import (
    RETRY_ON,
    EnvoySettings,
    ExtProcCanary,
    OutlierSettings,
    RetrySettings,
    compile_envoy,
)
from extproc.config.gate import Gates, compile_gates
from extproc.config.telemetry import (
    DecisionLogSettings,
    FeedbackSettings,
    RetryPatternSettings,
    StateSettings,
    TelemetrySettings,
    compile_telemetry,
)
from extproc.config.tiers import Backend, Mirror, Price, Tier, compile_tiers
from extproc.core.errors import ConfigError
from extproc.core.rules import Classifier, Rule, RuleKind, TextScope

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PATHS",
    "DEFAULT_TRIGGERS",
    "DEFAULT_VOLUME_QUERY",
    "RETRY_ON",
    "Backend",
    "Canary",
    "Classifier",
    "DecisionLogSettings",
    "EnvoySettings",
    "ExtProcCanary",
    "FeedbackSettings",
    "Mirror",
    "OutlierSettings",
    "Price",
    "RetryPatternSettings",
    "RetrySettings",
    "Rollout",
    "Rule",
    "RuleKind",
    "ServerSettings",
    "Snapshot",
    "StateSettings",
    "TelemetrySettings",
    "TextScope",
    "Tier",
    "Trigger",
    "compile_config",
    "compile_document",
    "fallback_chain",
    "load_snapshot",
]

DEFAULT_CONFIG = Path(__file__).parent.parent / "defaults" / "cascade.yaml"
DEFAULT_PATHS = ("/v1/chat/completions",)
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    paths: tuple[str, ...] = DEFAULT_PATHS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: on by default: every attempt asks its backend for the model that backend serves
    rewrite_model: bool = True


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
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    #: the confidence gates (`extproc.config.gate`)
    gates: Gates = field(default_factory=Gates)
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


def fallback_chain(snapshot: Snapshot, tier: str) -> tuple[str, ...]:
    """The tiers a request decided for `tier` may be served by, in order (itself first)."""
    chain = [tier]
    current = snapshot.tier(tier).fallback
    while current is not None and current not in chain:
        chain.append(current)
        current = snapshot.tier(current).fallback
    return tuple(chain)


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
    "cache",
    "capture",
    "gate",
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
    """Compile a parsed document; every error of the file is reported (see `Checker.finish`)."""
    check = Checker(source, collect=True)
    top = check.attempt(
        lambda: check.mapping(document, "", _TOP_KEYS, {"tiers", "classifiers", "classifier"}),
        None,
    )
    if top is None:  # not a mapping, or a required section is missing: report what is known
        if isinstance(document, dict):
            _compile_sections(check, document, set(document) & _TOP_KEYS)
        check.finish()
    assert top is not None
    snapshot = _compile_sections(check, top, set(top))
    check.finish()
    assert snapshot is not None
    return replace(snapshot, digest=digest)


def _compile_sections(check: Checker, top: dict[str, Any], present: set[str]) -> Snapshot | None:
    """Compile each section on its own, so one bad section does not hide the others' errors."""
    if "schema" in top and top["schema"] != 1:
        check.record(check.fail("schema", f"unsupported schema {top['schema']!r}; expected 1"))
    tiers: tuple[Tier, ...] = ()
    if "tiers" in present:
        tiers = check.attempt(lambda: compile_tiers(check, top["tiers"]), ())
    # Tier names for the checks that refer to them, even when a tier has an error elsewhere.
    names = tuple(t.name for t in tiers) or _raw_tier_names(top.get("tiers"))
    default_tier = check.attempt(
        lambda: (
            check.choice(top.get("default_tier", names[0]), "default_tier", names) if names else ""
        ),
        "",
    )
    classifiers: dict[str, Classifier] = {}
    if "classifiers" in present:
        raw = check.attempt(
            lambda: check.mapping(top["classifiers"], "classifiers", set(top["classifiers"])),
            None,
        )
        if raw is not None and not raw:
            check.record(check.fail("classifiers", "expected at least one classifier version"))
        for version, spec in (raw or {}).items():
            path = join_path("classifiers", str(version))
            compiled = check.attempt(
                partial(compile_classifier, check, str(version), spec, path, names), None
            )
            if compiled is not None:
                classifiers[str(version)] = compiled
    versions = tuple(classifiers) or tuple(str(v) for v in top.get("classifiers") or {})
    stable = ""
    if "classifier" in present:
        stable = check.attempt(lambda: check.choice(top["classifier"], "classifier", versions), "")
    canary = check.attempt(lambda: compile_canary(check, top.get("canary"), versions, stable), None)
    server = check.attempt(lambda: _compile_server(check, top.get("server")), ServerSettings())
    envoy = check.attempt(lambda: compile_envoy(check, top.get("envoy")), EnvoySettings())
    telemetry = check.attempt(
        lambda: compile_telemetry(check, top.get("telemetry")), TelemetrySettings()
    )
    cache = check.attempt(lambda: compile_cache(check, top.get("cache")), CacheSettings())
    capture = check.attempt(
        lambda: compile_capture(
            check,
            top.get("capture"),
            tiers,
            rewrite_model=server.rewrite_model,
            response_processing=telemetry.response_processing,
        ),
        CaptureSettings(),
    )
    raw_classifiers = top.get("classifiers")
    gates = check.attempt(  # the tiers' gates, once the tiers themselves compiled
        lambda: (
            compile_gates(
                check,
                top.get("tiers"),
                tiers,
                raw_classifiers if isinstance(raw_classifiers, dict) else {},
                top.get("gate"),
            )
            if tiers
            else Gates()
        ),
        Gates(),
    )
    if check.errors:
        return None
    return Snapshot(
        source=check.source,
        digest="",
        tiers=tiers,
        default_tier=default_tier,
        stable=stable,
        canary=canary,
        classifiers=classifiers,
        server=server,
        envoy=envoy,
        telemetry=telemetry,
        cache=cache,
        capture=capture,
        gates=gates,
        raw=top,
    )


def _raw_tier_names(value: object) -> tuple[str, ...]:
    """The names written under `tiers:`, as far as they are strings (for error reports)."""
    if not isinstance(value, list):
        return ()
    return tuple(
        item["name"]
        for item in value
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    )


def _compile_server(check: Checker, value: object) -> ServerSettings:
    if value is None:
        return ServerSettings()
    spec = check.mapping(value, "server", {"paths", "max_body_bytes", "rewrite_model"})
    paths = tuple(
        check.string(p, join_path("server.paths", i))
        for i, p in enumerate(
            check.sequence(spec.get("paths", list(DEFAULT_PATHS)), "server.paths")
        )
    )
    for index, item in enumerate(paths):
        if not item.startswith("/"):
            raise check.fail(
                join_path("server.paths", index), f"expected a path starting with '/', got {item!r}"
            )
    return ServerSettings(
        paths=paths,
        max_body_bytes=check.integer(
            spec.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES), "server.max_body_bytes", minimum=1
        ),
        rewrite_model=check.boolean(spec.get("rewrite_model", True), "server.rewrite_model"),
    )
