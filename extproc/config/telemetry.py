"""The `telemetry:` section: what the server observes and where it keeps it
(docs/observability.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from extproc.config.check import Checker, join_path


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


def compile_telemetry(check: Checker, value: object) -> TelemetrySettings:
    if value is None:
        return TelemetrySettings()
    spec = check.mapping(value, "telemetry", _TELEMETRY_KEYS)
    defaults = TelemetrySettings()
    headers = spec.get("user_key_headers", list(defaults.user_key_headers))
    names = tuple(
        name.lower() for name in check.strings(headers, "telemetry.user_key_headers", empty=True)
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


def _compile_decision_log(check: Checker, value: object) -> DecisionLogSettings | None:
    if value is None:
        return None
    path = "telemetry.decision_log"
    spec = check.mapping(value, path, {"path", "max_bytes", "backups", "queue_size"}, {"path"})
    defaults = DecisionLogSettings(path="")
    return DecisionLogSettings(
        path=check.string(spec["path"], join_path(path, "path")),
        max_bytes=check.integer(
            spec.get("max_bytes", defaults.max_bytes), join_path(path, "max_bytes"), minimum=1024
        ),
        backups=check.integer(spec.get("backups", defaults.backups), join_path(path, "backups")),
        queue_size=check.integer(
            spec.get("queue_size", defaults.queue_size), join_path(path, "queue_size"), minimum=1
        ),
    )


def _compile_retry_pattern(check: Checker, value: object) -> RetryPatternSettings:
    if value is None:
        return RetryPatternSettings()
    path = "telemetry.retry"
    spec = check.mapping(value, path, {"enabled", "similarity", "window_s", "per_user"})
    defaults = RetryPatternSettings()
    similarity = check.share(
        spec.get("similarity", defaults.similarity), join_path(path, "similarity")
    )
    return RetryPatternSettings(
        enabled=check.boolean(spec.get("enabled", defaults.enabled), join_path(path, "enabled")),
        similarity=similarity,
        window_s=check.integer(
            spec.get("window_s", defaults.window_s), join_path(path, "window_s"), minimum=1
        ),
        per_user=check.integer(
            spec.get("per_user", defaults.per_user), join_path(path, "per_user"), minimum=1
        ),
    )


def _compile_feedback(check: Checker, value: object) -> FeedbackSettings:
    if value is None:
        return FeedbackSettings()
    path = "telemetry.feedback"
    spec = check.mapping(value, path, {"short_prompt_chars", "cheap_output_tokens"})
    defaults = FeedbackSettings()
    return FeedbackSettings(
        **{
            key: check.integer(spec.get(key, getattr(defaults, key)), join_path(path, key))
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


def _compile_state(check: Checker, value: object) -> StateSettings:
    if value is None:
        return StateSettings()
    path = "telemetry.state"
    spec = check.mapping(value, path, _STATE_KEYS)
    defaults = StateSettings()
    backend = check.choice(
        spec.get("backend", defaults.backend), join_path(path, "backend"), ("memory", "redis")
    )
    url = check.string(spec.get("url", ""), join_path(path, "url"), empty=True)
    if backend == "redis" and not url.startswith(("redis://", "rediss://", "unix://")):
        raise check.fail(
            join_path(path, "url"),
            f"the redis backend needs a redis:// or unix:// URL, got {url!r}",
        )
    numbers = {
        key: check.integer(spec.get(key, getattr(defaults, key)), join_path(path, key), minimum=1)
        for key in ("max_users", "max_requests", "request_ttl_s", "timeout_ms")
    }
    return StateSettings(
        backend=backend,
        url=url,
        key_prefix=check.string(
            spec.get("key_prefix", defaults.key_prefix), join_path(path, "key_prefix")
        ),
        **numbers,
    )
