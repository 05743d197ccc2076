"""The `tiers:` section: tiers in rank order, their prices and backends, fallback and mirror.

`fallback` and `mirror` name other tiers, so they are linked once every tier is known, and a
fallback chain must not loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from extproc.config.backends import BACKEND_KEYS, BackendTls, Credential, compile_target
from extproc.config.check import Checker, join_path


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
    #: URL backends (extproc/config/backends.py): TLS, the base path replacing `/v1`, the Host
    #: header, the credential Envoy injects; all empty for a plain `host:port`
    tls: BackendTls | None = None
    path: str = ""
    host_header: str = ""
    credential: Credential | None = None

    @property
    def needs_listener(self) -> bool:
        """Reached through its own Envoy listener (TLS, path, Host or credential to apply)."""
        return bool(self.tls or self.path or self.host_header or self.credential)


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
    #: the tier route's timeout and per-try timeout; 0 = `envoy.route_timeout_s`,
    #: `envoy.retries.per_try_timeout_s`
    timeout_s: int = 0
    per_try_timeout_s: int = 0

    @property
    def backend_groups(self) -> tuple[tuple[str, tuple[Backend, ...]], ...]:
        """Backends grouped by `name`, in first-seen order (two or more = a backend canary)."""
        groups: dict[str, list[Backend]] = {}
        for backend in self.backends:
            groups.setdefault(backend.name, []).append(backend)
        return tuple((name, tuple(members)) for name, members in groups.items())


_TIER_KEYS = {"name", "model", "price", "backends", "fallback", "mirror", "sticky_header"}
_TIER_KEYS.add("gate")  # the confidence gate: compiled by extproc.config.gate


def compile_tiers(check: Checker, value: object) -> tuple[Tier, ...]:
    items = check.sequence(value, "tiers")
    tiers: list[Tier] = []
    for index, item in enumerate(items):
        path = join_path("tiers", index)
        spec = check.mapping(item, path, _TIER_KEYS, {"name"})
        name = check.string(spec["name"], join_path(path, "name"))
        if any(t.name == name for t in tiers):
            raise check.fail(join_path(path, "name"), f"duplicate tier {name!r}")
        if not name.replace("_", "").replace("-", "").isalnum() or not name.isascii():
            raise check.fail(join_path(path, "name"), "expected letters, digits, '-' or '_'")
        model = check.string(spec.get("model", ""), join_path(path, "model"), empty=True)
        price = _compile_price(check, spec.get("price"), join_path(path, "price"))
        backends = _compile_backends(
            check, spec.get("backends"), join_path(path, "backends"), model
        )
        timeout_s, per_try_timeout_s = _timeouts(check, spec, path)
        sticky = check.string(
            spec.get("sticky_header", "x-user-id"), join_path(path, "sticky_header"), empty=True
        )
        tiers.append(
            Tier(
                name=name,
                rank=index,
                model=model,
                price=price,
                backends=backends,
                sticky_header=sticky.strip().lower(),
                timeout_s=timeout_s,
                per_try_timeout_s=per_try_timeout_s,
            )
        )
    names = tuple(t.name for t in tiers)
    for index, item in enumerate(items):
        tiers[index] = _link_tier(check, tiers[index], item, join_path("tiers", index), names)
    _check_fallback_cycles(check, tiers)
    return tuple(tiers)


def _link_tier(
    check: Checker, tier: Tier, spec: dict[str, Any], path: str, names: tuple[str, ...]
) -> Tier:
    """`fallback` and `mirror` name other tiers: checked once every tier is known."""
    fallback = None
    if "fallback" in spec:
        fallback = check.choice(spec["fallback"], join_path(path, "fallback"), names)
        if fallback == tier.name:
            raise check.fail(join_path(path, "fallback"), "a tier cannot fall back to itself")
    mirror = None
    if "mirror" in spec:
        mirror_path = join_path(path, "mirror")
        raw = check.mapping(spec["mirror"], mirror_path, {"tier", "percent"}, {"tier", "percent"})
        target = check.choice(raw["tier"], join_path(mirror_path, "tier"), names)
        if target == tier.name:
            raise check.fail(join_path(mirror_path, "tier"), "a tier cannot mirror to itself")
        percent = check.number(raw["percent"], join_path(mirror_path, "percent"))
        if percent > 100:
            raise check.fail(
                join_path(mirror_path, "percent"), f"expected a percentage 0..100, got {percent}"
            )
        mirror = Mirror(tier=target, percent=percent)
    if fallback is None and mirror is None:
        return tier
    return replace(tier, fallback=fallback, mirror=mirror)


def _check_fallback_cycles(check: Checker, tiers: list[Tier]) -> None:
    by_name = {t.name: t for t in tiers}
    for index, tier in enumerate(tiers):
        seen = [tier.name]
        current = tier.fallback
        while current is not None:
            if current in seen:
                chain = " -> ".join([*seen, current])
                raise check.fail(
                    join_path(join_path("tiers", index), "fallback"), f"cycle: {chain}"
                )
            seen.append(current)
            current = by_name[current].fallback


_TIER_KEYS.update({"timeout_s", "per_try_timeout_s"})  # the tier's own route timeouts


def _timeouts(check: Checker, spec: dict[str, Any], path: str) -> tuple[int, int]:
    """The tier's `timeout_s` and `per_try_timeout_s` (0 = the `envoy:` settings)."""
    timeout = check.integer(spec.get("timeout_s", 0), join_path(path, "timeout_s"))
    per_try = check.integer(spec.get("per_try_timeout_s", 0), join_path(path, "per_try_timeout_s"))
    if timeout and per_try > timeout:
        raise check.fail(join_path(path, "per_try_timeout_s"), "longer than the tier's timeout_s")
    return timeout, per_try


def _compile_price(check: Checker, value: object, path: str) -> Price:
    if value is None:
        return Price()
    spec = check.mapping(value, path, {"input_per_mtok", "output_per_mtok", "per_hour"})
    return Price(
        **{key: check.number(spec[key], join_path(path, key)) for key in spec},
    )


def _compile_backends(
    check: Checker, value: object, path: str, tier_model: str
) -> tuple[Backend, ...]:
    if value is None:
        return ()
    backends: list[Backend] = []
    named = 0
    for index, item in enumerate(check.sequence(value, path)):
        item_path = join_path(path, index)
        spec = check.mapping(item, item_path, BACKEND_KEYS, {"address"})
        target = compile_target(check, spec, item_path)
        if "name" in spec:
            named += 1
            label = check.string(spec["name"], join_path(item_path, "name"))
            if not label.isascii() or not label.replace("_", "").replace("-", "").isalnum():
                raise check.fail(
                    join_path(item_path, "name"), "expected letters, digits, '-' or '_'"
                )
        elif named:
            raise check.fail(
                join_path(item_path, "name"), "name every backend of the tier, or none"
            )
        backends.append(
            Backend(
                address=target.host,
                port=target.port,
                model=check.string(
                    spec.get("model", tier_model), join_path(item_path, "model"), empty=True
                ),
                weight=check.integer(
                    spec.get("weight", 100), join_path(item_path, "weight"), minimum=1
                ),
                name=check.string(spec.get("name", ""), join_path(item_path, "name"), empty=True),
                tls=target.tls,
                path=target.path,
                host_header=target.host_header,
                credential=target.credential,
            )
        )
    if named and named != len(backends):
        raise check.fail(path, "name every backend of the tier, or none")
    return tuple(backends)
