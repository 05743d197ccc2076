"""The observer contract: what the routing layer tells telemetry, as frozen facts per phase.

The processor builds one immutable record per phase and hands it over; it never reads back what
an observer wrote. Telemetry implements `Observer` (`extproc.telemetry.recorder`), tests count
with it. Calls happen after the phase's answer is on its way (`RequestProcessor.after_answer`),
except `started`, whose returned `Trace` carries the propagation headers the answer includes.
Every method does constant, small work and hands anything slow to the background.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from extproc.core.classify import Decision

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Trace:
    """An observer's per-request handle (a span), opaque to routing, and the headers that
    continue it upstream (`traceparent`, `tracestate`): computed once, when the request starts."""

    handle: object = None
    propagation: tuple[tuple[str, str], ...] = ()


NO_TRACE = Trace()


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Facts about the HTTP request taken from its headers (never the prompt)."""

    path: str = ""
    method: str = ""
    request_id: str = ""
    content_type: str = ""
    canary_key: str = ""
    #: raw value of the first `telemetry.user_key_headers` present ("" = anonymous);
    #: observers keep only a hash of it
    user: str = ""
    #: `time.perf_counter()` / `time.time_ns()` when the request headers arrived
    started: float = 0.0
    started_ns: int = 0
    #: every request header, lower-cased names (read-only)
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS, repr=False)


@dataclass(frozen=True, slots=True)
class DecisionInfo:
    """The routing decision and what telemetry asked to be kept of the prompt."""

    decision: Decision
    #: seconds spent parsing and classifying
    seconds: float = 0.0
    #: the `model` the client asked for
    model: str = ""
    #: excerpt of the last user message for retry similarity; only with `telemetry.retry`
    retry_text: str = ""
    #: (role, text) of every message; only with `telemetry.capture_prompts`
    prompt: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What the response side saw of one answer."""

    #: HTTP status; 0 when no response message arrived (response processing off)
    status: int = 0
    cluster: str = ""
    #: the tier whose backend answered (after a fallback: not the decided one)
    served_tier: str = ""
    upstream: str = ""
    #: `time.perf_counter()` of the first body chunk and of the end, None when not seen
    first_chunk: float | None = None
    ended: float | None = None
    #: True when the body ended normally (end_of_stream), False when the stream broke off
    complete: bool = False
    tokens_in: int | None = None
    tokens_out: int | None = None
    #: the `model` the backend reported
    model: str = ""

    @property
    def observed(self) -> bool:
        return self.status != 0 or self.first_chunk is not None


@dataclass(frozen=True, slots=True)
class GateInfo:
    """One confidence-gate verdict on a held answer (upstream role)."""

    tier: str
    #: the tier the answer is escalated to; "" when it passed
    escalate_to: str = ""
    confidence: float = 1.0
    #: "trusted", "between" or "low" (`extproc.core.gate.Verdict.band`)
    band: str = ""
    #: the heaviest finding's check, and every finding's
    reason: str = ""
    reasons: tuple[str, ...] = ()
    #: not judged, and why (`status`, `encoded`, `unparsable`); "" when judged
    skipped: str = ""
    #: tokens of an escalated (discarded) answer, charged to its tier: the backend's `usage`,
    #: or for a stream the content events held so far (prompt tokens unknown: None)
    tokens_in: int | None = None
    tokens_out: int | None = None


class Observer(Protocol):
    def started(self, request: RequestInfo) -> Trace: ...

    def decided(self, request: RequestInfo, decided: DecisionInfo, trace: Trace) -> None: ...

    def rejected(self, kind: str, request: RequestInfo, trace: Trace) -> None: ...

    def classifier_failed(self, request: RequestInfo) -> None: ...

    def fell_back(self, from_tier: str, to_tier: str, request: RequestInfo) -> None:
        """An attempt went to `to_tier` although `from_tier` was decided (upstream role)."""
        ...

    def gated(self, gate: GateInfo, request: RequestInfo) -> None:
        """The confidence gate judged (or skipped) a held answer (upstream role)."""
        ...

    def finished(
        self,
        request: RequestInfo,
        decided: DecisionInfo | None,
        response: ResponseInfo,
        trace: Trace,
    ) -> None: ...


class NullObserver:
    def started(self, request: RequestInfo) -> Trace:
        return NO_TRACE

    def decided(self, request: RequestInfo, decided: DecisionInfo, trace: Trace) -> None:
        pass

    def rejected(self, kind: str, request: RequestInfo, trace: Trace) -> None:
        pass

    def classifier_failed(self, request: RequestInfo) -> None:
        pass

    def fell_back(self, from_tier: str, to_tier: str, request: RequestInfo) -> None:
        pass

    def gated(self, gate: GateInfo, request: RequestInfo) -> None:
        pass

    def finished(
        self,
        request: RequestInfo,
        decided: DecisionInfo | None,
        response: ResponseInfo,
        trace: Trace,
    ) -> None:
        pass
