"""The `cache:` section: the response cache (docs/cache.md). Absent: no cache."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

from extproc.config.check import Checker, join_path
from extproc.core.cache_key import DEFAULT_IGNORE

#: environment variable holding the tenant-HMAC secret when `secret_file` is not set
SECRET_ENV = "CASCADE_CACHE_SECRET"
#: a secret made up per process when none is configured (memory backend only)
_PROCESS_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class SemanticSettings:
    """Near-duplicate hits: same everything but the last user message, same facts, similar text."""

    enabled: bool = False
    #: cosine of the character 3-gram sets of the two last user messages
    threshold: float = 0.9
    #: stored texts compared per bucket (same prefix and facts); the oldest are dropped first
    max_per_bucket: int = 1000
    #: a longer last user message is matched exactly only (its near-duplicate check would cost
    #: more than it finds: long prompts repeat verbatim or not at all)
    max_chars: int = 2000


@dataclass(frozen=True, slots=True)
class CacheRedisSettings:
    url: str = ""
    key_prefix: str = "cascade:cache:"
    #: Redis command timeout; the answer path never waits for Redis
    timeout_ms: int = 200
    #: entries kept in the shared stream (replicas warm up from it)
    stream_max_len: int = 10_000


@dataclass(frozen=True, slots=True)
class CacheSettings:
    enabled: bool = False
    #: `tenant`: one partition per identity (no identity, no cache); `global`: one for everyone
    scope: str = "tenant"
    #: request headers naming the tenant (first present wins); only an HMAC of the value is kept
    identity_headers: tuple[str, ...] = ("x-user-id",)
    #: request fields left out of the key
    ignore_fields: tuple[str, ...] = DEFAULT_IGNORE
    ttl_s: int = 3600
    max_entries: int = 10_000
    #: larger answers are not stored
    max_entry_bytes: int = 256 * 1024
    #: requests sampled hotter than this are neither served from nor written to the cache
    max_temperature: float = 1.0
    #: the temperature of a request that sets none (OpenAI's default)
    default_temperature: float = 1.0
    #: answers that call tools are stored only when this is on
    store_tool_calls: bool = False
    #: a new classifier version starts with an empty cache
    partition_by_classifier: bool = True
    #: bump to invalidate every entry (part of every key)
    epoch: int = 0
    #: characters per `delta` when a stored answer is replayed as SSE
    replay_chunk_chars: int = 64
    #: share of would-be hits sent to the backend anyway and compared (false-hit rate)
    audit_share: float = 0.0
    #: API callers (`--api-tokens` names) allowed to invalidate the cache
    admin_callers: tuple[str, ...] = ()
    backend: str = "memory"
    semantic: SemanticSettings = field(default_factory=SemanticSettings)
    redis: CacheRedisSettings = field(default_factory=CacheRedisSettings)
    secret: bytes = field(default=_PROCESS_SECRET, repr=False, compare=False)

    @property
    def headers(self) -> tuple[str, ...]:
        """Request headers the cache reads (Envoy must forward them to the server)."""
        return (*self.identity_headers, "cache-control")


#: the section's keys: the settings' fields, with the secret read from `secret_file`
_KEYS = {item.name for item in fields(CacheSettings)} - {"secret"} | {"secret_file"}


def compile_cache(check: Checker, value: object) -> CacheSettings:
    if value is None:
        return CacheSettings()
    path = "cache"
    spec = check.mapping(value, path, _KEYS)
    defaults = CacheSettings()

    def get(key: str) -> object:
        default = getattr(defaults, key)
        return spec.get(key, list(default) if isinstance(default, tuple) else default)

    def at(key: str) -> str:
        return join_path(path, key)

    integers = {
        key: check.integer(get(key), at(key), minimum=1)
        for key in ("ttl_s", "max_entries", "max_entry_bytes", "replay_chunk_chars")
    }
    audit = check.number(get("audit_share"), at("audit_share"))
    if audit > 1:
        raise check.fail(at("audit_share"), f"expected a share 0..1, got {audit}")
    backend = check.choice(get("backend"), at("backend"), ("memory", "redis"))
    redis = _compile_redis(check, spec.get("redis"), required=backend == "redis")
    secret = _secret(check, spec.get("secret_file"), at("secret_file"))
    if backend == "redis" and secret is None:
        raise check.fail(
            at("secret_file"),
            f"the redis backend needs a secret shared by every replica "
            f"(secret_file, or the {SECRET_ENV} environment variable)",
        )
    identity = check.strings(get("identity_headers"), at("identity_headers"), empty=True)
    return CacheSettings(
        enabled=check.boolean(spec.get("enabled", True), at("enabled")),
        scope=check.choice(get("scope"), at("scope"), ("tenant", "global")),
        identity_headers=tuple(name.lower() for name in identity),
        ignore_fields=tuple(check.strings(get("ignore_fields"), at("ignore_fields"), empty=True)),
        **integers,
        max_temperature=check.number(get("max_temperature"), at("max_temperature")),
        default_temperature=check.number(get("default_temperature"), at("default_temperature")),
        store_tool_calls=check.boolean(get("store_tool_calls"), at("store_tool_calls")),
        partition_by_classifier=check.boolean(
            get("partition_by_classifier"), at("partition_by_classifier")
        ),
        epoch=check.integer(get("epoch"), at("epoch")),
        audit_share=audit,
        admin_callers=tuple(check.strings(get("admin_callers"), at("admin_callers"), empty=True)),
        backend=backend,
        semantic=_compile_semantic(check, spec.get("semantic")),
        redis=redis,
        secret=secret if secret is not None else _PROCESS_SECRET,
    )


def _secret(check: Checker, value: object, path: str) -> bytes | None:
    if value is None:
        from_env = os.environ.get(SECRET_ENV, "")
        return from_env.encode() if from_env else None
    name = check.string(value, path)
    try:
        secret = Path(name).read_bytes().strip()
    except OSError as exc:
        raise check.fail(path, f"cannot read the secret file: {exc.strerror or exc}") from None
    if len(secret) < 16:
        raise check.fail(path, "the secret must be at least 16 bytes")
    return secret


def _compile_semantic(check: Checker, value: object) -> SemanticSettings:
    if value is None:
        return SemanticSettings()
    path = "cache.semantic"
    spec = check.mapping(value, path, {"enabled", "threshold", "max_per_bucket", "max_chars"})
    defaults = SemanticSettings()
    threshold = check.share(spec.get("threshold", defaults.threshold), join_path(path, "threshold"))
    return SemanticSettings(
        enabled=check.boolean(spec.get("enabled", True), join_path(path, "enabled")),
        threshold=threshold,
        max_per_bucket=check.integer(
            spec.get("max_per_bucket", defaults.max_per_bucket),
            join_path(path, "max_per_bucket"),
            minimum=1,
        ),
        max_chars=check.integer(
            spec.get("max_chars", defaults.max_chars), join_path(path, "max_chars"), minimum=1
        ),
    )


def _compile_redis(check: Checker, value: object, *, required: bool) -> CacheRedisSettings:
    path = "cache.redis"
    if value is None:
        if required:
            raise check.fail(path, "the redis backend needs a redis: section with a url")
        return CacheRedisSettings()
    spec = check.mapping(value, path, {"url", "key_prefix", "timeout_ms", "stream_max_len"})
    defaults = CacheRedisSettings()
    url = check.string(spec.get("url", ""), join_path(path, "url"), empty=not required)
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise check.fail(join_path(path, "url"), f"expected a redis:// or unix:// URL, got {url!r}")
    return CacheRedisSettings(
        url=url,
        key_prefix=check.string(
            spec.get("key_prefix", defaults.key_prefix), join_path(path, "key_prefix")
        ),
        timeout_ms=check.integer(
            spec.get("timeout_ms", defaults.timeout_ms), join_path(path, "timeout_ms"), minimum=1
        ),
        stream_max_len=check.integer(
            spec.get("stream_max_len", defaults.stream_max_len),
            join_path(path, "stream_max_len"),
            minimum=1,
        ),
    )
