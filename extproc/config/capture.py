"""The `capture:` section: keep both answers of mirrored requests as pairs for `cascade judge`.

Off unless `capture.tiers` names at least one tier. Each named tier must have a `mirror`: of its
requests that Envoy mirrors, a `sample` percent (by request id) is captured: the prompt and the
primary's answer (from the response path), the shadow's answer (from the per-attempt role on
the mirror's cluster), joined by `x-request-id`. Requests that are not mirrored are never
captured. Text passes `telemetry.redact` before it is written.

    capture:
      tiers: [weak]
      sample: 100            # percent of mirrored requests
      max_text_bytes: 65536  # of the prompt and of each answer; longer is cut (`truncated`)
      join_timeout_s: 30     # a side still missing then: the pair is written with `missing`
      max_pending: 2000      # pairs waiting for a side; beyond, new ones are dropped (counted)
      queue_size: 1000       # pairs waiting for the writer; a full queue drops (counted)
      retention_s: 604800    # pairs older than this are deleted from the sink
      segment_header: x-plan # optional request header recorded as the pair's user segment
      sink: {kind: jsonl, path: /var/lib/cascade/pairs.jsonl, max_bytes: 104857600, backups: 5}
      # sink: {kind: redis, url: redis://redis:6379/0, stream: cascade:pairs, max_len: 100000}

Needs `server.rewrite_model` (the shadow must ask the mirror tier's backend for its own model,
and the per-attempt filter on the mirror's cluster is the one that sees the shadow's answer) and
`telemetry.response_processing` (the primary's answer is read on the response path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from extproc.config.check import Checker, join_path
from extproc.config.tiers import Tier

_KEYS = {
    "tiers",
    "sample",
    "max_text_bytes",
    "join_timeout_s",
    "max_pending",
    "queue_size",
    "retention_s",
    "segment_header",
    "sink",
}
_SINK_KEYS = {"kind", "path", "max_bytes", "backups", "url", "stream", "max_len", "timeout_ms"}


@dataclass(frozen=True, slots=True)
class SinkSettings:
    kind: str = "jsonl"
    path: str = "cascade-pairs.jsonl"
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5
    url: str = ""
    stream: str = "cascade:pairs"
    max_len: int = 100_000
    timeout_ms: int = 1000


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    #: tiers whose mirrored requests are captured (empty: capture is off)
    tiers: frozenset[str] = frozenset()
    sample: float = 100.0
    max_text_bytes: int = 64 * 1024
    join_timeout_s: float = 30.0
    max_pending: int = 2000
    queue_size: int = 1000
    retention_s: int = 7 * 86_400
    segment_header: str = ""
    sink: SinkSettings = field(default_factory=SinkSettings)

    @property
    def enabled(self) -> bool:
        return bool(self.tiers)


def compile_capture(
    check: Checker,
    value: object,
    tiers: tuple[Tier, ...],
    *,
    rewrite_model: bool,
    response_processing: bool,
) -> CaptureSettings:
    if value is None:
        return CaptureSettings()
    spec = check.mapping(value, "capture", _KEYS)
    defaults = CaptureSettings()
    by_name = {tier.name: tier for tier in tiers}
    names = tuple(by_name)
    chosen = frozenset(
        check.choice(name, join_path("capture.tiers", index), names)
        for index, name in enumerate(
            check.sequence(spec.get("tiers", []), "capture.tiers", empty=True)
        )
    )
    for name in sorted(chosen):
        if by_name[name].mirror is None:
            raise check.fail("capture.tiers", f"tier {name} has no mirror: nothing to capture")
    if chosen and not rewrite_model:
        raise check.fail("capture", "needs server.rewrite_model: true")
    if chosen and not response_processing:
        raise check.fail("capture", "needs telemetry.response_processing: true")
    header = check.string(spec.get("segment_header", ""), "capture.segment_header", empty=True)
    integer = _integers(check, spec, "capture", defaults)
    return CaptureSettings(
        tiers=chosen,
        sample=check.percent(spec.get("sample", defaults.sample), "capture.sample"),
        max_text_bytes=integer("max_text_bytes", 256),
        join_timeout_s=check.number(
            spec.get("join_timeout_s", defaults.join_timeout_s),
            "capture.join_timeout_s",
            minimum=0.1,
        ),
        max_pending=integer("max_pending", 1),
        queue_size=integer("queue_size", 1),
        retention_s=integer("retention_s", 60),
        segment_header=header.strip().lower(),
        sink=_compile_sink(check, spec.get("sink")),
    )


def _integers(
    check: Checker, spec: dict[str, Any], path: str, defaults: object
) -> Callable[[str, int], int]:
    """`integer(key, minimum)`: the key's value (or its default), checked."""

    def integer(key: str, minimum: int) -> int:
        value = spec.get(key, getattr(defaults, key))
        return check.integer(value, join_path(path, key), minimum=minimum)

    return integer


def _compile_sink(check: Checker, value: object) -> SinkSettings:
    if value is None:
        return SinkSettings()
    path = "capture.sink"
    spec = check.mapping(value, path, _SINK_KEYS)
    defaults = SinkSettings()
    integer = _integers(check, spec, path, defaults)
    kind = check.choice(
        spec.get("kind", defaults.kind), join_path(path, "kind"), ("jsonl", "redis")
    )
    url = check.string(spec.get("url", ""), join_path(path, "url"), empty=True)
    if kind == "redis" and not url.startswith(("redis://", "rediss://", "unix://")):
        raise check.fail(join_path(path, "url"), "expected redis://, rediss:// or unix:// URL")
    return SinkSettings(
        kind=kind,
        path=check.string(spec.get("path", defaults.path), join_path(path, "path")),
        max_bytes=integer("max_bytes", 1024),
        backups=integer("backups", 0),
        url=url,
        stream=check.string(spec.get("stream", defaults.stream), join_path(path, "stream")),
        max_len=integer("max_len", 1),
        timeout_ms=integer("timeout_ms", 1),
    )
