"""The `envoy:` section: what `cascade render envoy` needs beyond the tiers (listeners, the
ext_proc cluster and its canary, timeouts, retries, outlier detection; docs/resilience.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from extproc.config.check import Checker, join_path


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
    #: streamed requests (`"stream": true`): per-try limit on the time to the response headers,
    #: i.e. to the first token (a stalled tier falls back); the stream itself is not limited.
    #: 0 = none (then `per_try_timeout_s` applies to them too)
    stream_per_try_timeout_ms: int = 10000
    #: retry budget per cluster: concurrent retries may be this percentage of the cluster's
    #: active plus pending requests ...
    budget_percent: float = 20.0
    #: ... but never fewer than this many (retries waiting out a Retry-After are not active
    #: requests, and an aggregate cluster has none of its own: docs/resilience.md)
    min_retry_concurrency: int = 1000
    #: the fixed breaker kgateway renders (BackendConfigPolicy `maxRetries`, no retry budget
    #: there); the rendered Envoy config uses the budget above
    max_concurrent: int = 1000
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
    #: a request the classifier did not decide (down, stopped, timed out: ext_proc failed open)
    #: goes to the default tier's route; `rewrite`: with its body's `model` set to the default
    #: tier's model; `pass`: unchanged; `reject`: an OpenAI-style 503 instead; `auto`: `rewrite`
    #: with `server.rewrite_model`, else `pass` (docs/resilience.md, "Fail-open that serves")
    unclassified: str = "auto"
    #: trusted CAs for `https://` backends without their own `tls.ca_file` (Debian/Ubuntu path;
    #: RHEL: /etc/pki/tls/certs/ca-bundle.crt, Alpine: /etc/ssl/certs/ca-certificates.crt)
    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"


UNCLASSIFIED = ("auto", "rewrite", "pass", "reject")

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
    "unclassified",
    "ca_bundle",
}


def compile_envoy(check: Checker, value: object) -> EnvoySettings:
    defaults = EnvoySettings()
    if value is None:
        return defaults
    spec = check.mapping(value, "envoy", _ENVOY_KEYS)
    addresses: dict[str, str] = {}
    for key in ("listen", "admin"):
        text = check.string(spec.get(key, getattr(defaults, key)), f"envoy.{key}")
        check.host_port(text, f"envoy.{key}", allow_zero=True)
        addresses[key] = text
    endpoints = check.strings(spec.get("ext_proc", list(defaults.ext_proc)), "envoy.ext_proc")
    for index, text in enumerate(endpoints):
        check.host_port(text, join_path("envoy.ext_proc", index))
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
    if retries.stream_per_try_timeout_ms >= numbers["route_timeout_s"] * 1000:
        raise check.fail(
            "envoy.retries.stream_per_try_timeout_ms",
            f"not shorter than envoy.route_timeout_s ({numbers['route_timeout_s']} s)",
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
        unclassified=check.choice(
            spec.get("unclassified", defaults.unclassified), "envoy.unclassified", UNCLASSIFIED
        ),
        ca_bundle=check.string(spec.get("ca_bundle", defaults.ca_bundle), "envoy.ca_bundle"),
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


def _compile_retries(check: Checker, value: object, path: str) -> RetrySettings:
    defaults = RetrySettings()
    if value is None:
        return defaults
    spec = check.mapping(value, path, {f.name for f in fields(RetrySettings)})
    on_path = join_path(path, "retry_on")
    retry_on = tuple(
        check.choice(item, join_path(on_path, index), RETRY_ON)
        for index, item in enumerate(
            check.sequence(spec.get("retry_on", list(defaults.retry_on)), on_path)
        )
    )
    codes_path = join_path(path, "status_codes")
    codes = tuple(
        check.integer(item, join_path(codes_path, index), minimum=400)
        for index, item in enumerate(
            check.sequence(spec.get("status_codes", list(defaults.status_codes)), codes_path)
        )
    )
    for index, code in enumerate(codes):
        if code > 599:
            raise check.fail(
                join_path(codes_path, index), f"expected a status 400..599, got {code}"
            )
    if codes and "retriable-status-codes" not in retry_on:
        raise check.fail(on_path, "status_codes need 'retriable-status-codes' in retry_on")

    def number(key: str, minimum: int = 0) -> int:
        return check.integer(
            spec.get(key, getattr(defaults, key)), join_path(path, key), minimum=minimum
        )

    settings = RetrySettings(
        num_retries=number("num_retries"),
        retry_on=retry_on,
        status_codes=codes,
        backoff_base_ms=number("backoff_base_ms", 1),
        backoff_max_ms=number("backoff_max_ms", 1),
        retry_after_max_ms=number("retry_after_max_ms"),
        per_try_timeout_s=number("per_try_timeout_s"),
        stream_per_try_timeout_ms=number("stream_per_try_timeout_ms"),
        budget_percent=check.percent(
            spec.get("budget_percent", defaults.budget_percent), join_path(path, "budget_percent")
        ),
        min_retry_concurrency=number("min_retry_concurrency", 1),
        max_concurrent=number("max_concurrent", 1),
        attempts_per_tier=number("attempts_per_tier", 1),
    )
    if settings.backoff_max_ms < settings.backoff_base_ms:
        raise check.fail(join_path(path, "backoff_max_ms"), "must be >= backoff_base_ms")
    return settings


def _compile_outlier(check: Checker, value: object, path: str) -> OutlierSettings:
    defaults = OutlierSettings()
    if value is None:
        return defaults
    spec = check.mapping(value, path, {f.name for f in fields(OutlierSettings)})
    numbers = {
        key: check.integer(spec.get(key, getattr(defaults, key)), join_path(path, key), minimum=1)
        for key in ("consecutive_5xx", "interval_ms", "base_ejection_ms", "max_ejection_percent")
    }
    if numbers["max_ejection_percent"] > 100:
        raise check.fail(join_path(path, "max_ejection_percent"), "expected a percentage 1..100")
    enabled = check.boolean(spec.get("enabled", True), join_path(path, "enabled"))
    return OutlierSettings(enabled=enabled, **numbers)


def _compile_ext_proc_canary(
    check: Checker, value: object, path: str, stable: list[str]
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
    for index, item in enumerate(check.sequence(spec["addresses"], join_path(path, "addresses"))):
        item_path = join_path(join_path(path, "addresses"), index)
        text = check.string(item, item_path)
        check.host_port(text, item_path)
        if text in stable:
            raise check.fail(item_path, f"{text} is also in envoy.ext_proc")
        addresses.append(text)
    defaults = ExtProcCanary(addresses=(), percent=0)
    runtime_key = check.string(
        spec.get("runtime_key", defaults.runtime_key), join_path(path, "runtime_key")
    )
    if any(c.isspace() for c in runtime_key):
        raise check.fail(join_path(path, "runtime_key"), "expected no whitespace")
    pin_header = check.string(
        spec.get("pin_header", defaults.pin_header), join_path(path, "pin_header")
    ).lower()
    if pin_header.startswith("x-cascade-"):
        raise check.fail(
            join_path(path, "pin_header"),
            "x-cascade-* headers from clients are removed before routing; pick another name",
        )
    return ExtProcCanary(
        addresses=tuple(addresses),
        percent=check.percent(spec["percent"], join_path(path, "percent")),
        mode=check.choice(
            spec.get("mode", defaults.mode), join_path(path, "mode"), ("route", "endpoints")
        ),
        runtime_key=runtime_key,
        pin_header=pin_header,
    )
