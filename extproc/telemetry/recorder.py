"""`Recorder`: the server's `Observer`. Metrics, spans, misroute signals and the decision log.

On the answer path it only updates in-memory counters and span attributes. Everything that may
wait (the state backend, the log file, span export) happens in background workers fed by a
bounded queue; a full queue drops the record and counts it (`cascade_telemetry_dropped_total`).

Per request, in the background, once its answer ended: the retry-pattern check against the
user's recent requests, remembering this request for later checks and for `SubmitFeedback`,
ending the span (with its real end time) and writing the decision-log record. Metric labels are
checked against the config first (`records.cluster_label`, `status_label`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.config.snapshot import DecisionLogSettings, Snapshot
from extproc.routing.observer import NO_TRACE, DecisionInfo, RequestInfo, ResponseInfo, Trace
from extproc.telemetry import records
from extproc.telemetry.decision_log import DecisionLog
from extproc.telemetry.gate_telemetry import GateRecording
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.misroute import (
    FALSE_NEGATIVE,
    MemoryState,
    RecentRequest,
    RequestSummary,
    RetryMatch,
    State,
    find_retry,
    hash_user,
    judge_feedback,
    open_state,
    sketch,
)
from extproc.telemetry.records import SIGNAL_FEEDBACK, SIGNAL_RETRY
from extproc.telemetry.redact import Redactor, load_redactor
from extproc.telemetry.sync import finish_without_waiting
from extproc.telemetry.tracing import MISROUTE_EVENT, Tracing

logger = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
WORKERS = 4


@dataclass(frozen=True, slots=True)
class _Finished:
    request: RequestInfo
    decided: DecisionInfo | None
    response: ResponseInfo
    trace: Trace
    cost: float | None
    end_ns: int


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    known: bool
    suspicion: str  # "", false_negative, false_positive


class Recorder(GateRecording):
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        state: State | None = None,
        decision_log: DecisionLog | None = None,
    ) -> None:
        self._snapshot = snapshot
        current = snapshot()
        settings = current.telemetry
        self.metrics = metrics or Metrics()
        self.tracing = tracing or Tracing(None)
        self.state = state or open_state(
            settings.state, settings.retry.per_user, settings.retry.window_s
        )
        self.decision_log = decision_log
        self.redact: Redactor = load_redactor(settings.redact)
        self._queue: asyncio.Queue[_Finished] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.metrics.configured(current)

    @classmethod
    def from_settings(
        cls, snapshot: Callable[[], Snapshot], metrics: Metrics, tracing: Tracing
    ) -> Recorder:
        settings: DecisionLogSettings | None = snapshot().telemetry.decision_log
        log = None
        if settings is not None:
            log = DecisionLog(
                settings, on_drop=metrics.telemetry_dropped.labels("decision_log").inc
            )
        return cls(snapshot, metrics, tracing, decision_log=log)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background workers (inside the running event loop)."""
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]
        if self.decision_log is not None:
            self.decision_log.start()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far has been processed."""
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
        if self.decision_log is not None:
            await asyncio.to_thread(self.decision_log.flush, timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        await self.drain(timeout)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self.decision_log is not None:
            await asyncio.to_thread(self.decision_log.close, timeout)
        await self.state.close()
        self.tracing.shutdown()

    def reloaded(self, ok: bool, message: str) -> None:
        """A `ConfigStore` listener."""
        self.metrics.reloaded(ok)
        if ok:
            self.metrics.configured(self._snapshot())

    # -- Observer: the answer path -----------------------------------------------------------------

    def started(self, request: RequestInfo) -> Trace:
        if not self.tracing.enabled:
            return NO_TRACE
        span = self.tracing.start(request.headers, request.started_ns)
        if span is None:
            return NO_TRACE
        return Trace(span, tuple(self.tracing.inject(span)))

    def decided(self, request: RequestInfo, decided: DecisionInfo, trace: Trace) -> None:
        decision = decided.decision
        metrics = self.metrics
        metrics.decisions.labels(decision.tier, decision.classifier, decision.rule).inc()
        metrics.classify_duration.observe(decided.seconds)
        span = trace.handle
        if span is None:
            return
        attributes = records.decided_attributes(request, decided, hash_user(request.user))
        self.tracing.annotate(span, attributes)
        if decided.prompt is not None:
            self.tracing.annotate(
                span, {"gen_ai.input.messages": orjson.dumps(self._prompt(decided)).decode()}
            )

    def rejected(self, kind: str, request: RequestInfo, trace: Trace) -> None:
        self.metrics.parse_failures.labels(kind).inc()
        self.tracing.annotate(trace.handle, {"cascade.parse_failure": kind})

    def classifier_failed(self, request: RequestInfo) -> None:
        self.metrics.classifier_errors.inc()

    def fell_back(self, from_tier: str, to_tier: str, request: RequestInfo) -> None:
        snapshot = self._snapshot()
        self.metrics.fallbacks.labels(
            records.tier_label(snapshot, from_tier), records.tier_label(snapshot, to_tier)
        ).inc()

    def finished(
        self,
        request: RequestInfo,
        decided: DecisionInfo | None,
        response: ResponseInfo,
        trace: Trace,
    ) -> None:
        snapshot = self._snapshot()
        cost: float | None = None
        if decided is not None and response.observed:
            cost = self._response_metrics(snapshot, decided, request, response)
        end = response.ended if response.ended is not None else time.perf_counter()
        end_ns = request.started_ns + int((end - request.started) * 1e9)
        item = _Finished(request, decided, response, trace, cost, end_ns)
        if self._queue is None:
            return
        if isinstance(self.state, MemoryState) and self._queue.empty():
            # Nothing here can wait with in-memory state: finish now, without a task switch.
            if finish_without_waiting(self._complete(item)):
                return
            logger.error(
                "in-memory telemetry completion suspended (request %r)", request.request_id
            )
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.telemetry_dropped.labels("recorder").inc()
            self.tracing.end(trace.handle, end_ns)

    def _response_metrics(
        self,
        snapshot: Snapshot,
        decided: DecisionInfo,
        request: RequestInfo,
        response: ResponseInfo,
    ) -> float | None:
        metrics = self.metrics
        decision = decided.decision
        served = records.tier_label(snapshot, response.served_tier or decision.tier)
        metrics.responses.labels(
            decision.tier,
            served,
            records.cluster_label(snapshot, response.cluster),
            records.status_label(response.status),
            decision.classifier,
        ).inc()
        if response.first_chunk is not None:
            metrics.ttft.labels(served, decision.classifier).observe(
                response.first_chunk - request.started
            )
        if response.complete and response.ended is not None:
            metrics.response_duration.labels(served, decision.classifier).observe(
                response.ended - request.started
            )
        if response.tokens_in is None and response.tokens_out is None:
            if response.complete and response.status and response.status < 400:
                metrics.usage_missing.labels(served).inc()
            return None
        if response.tokens_in:
            metrics.tokens.labels(served, "input").inc(response.tokens_in)
        if response.tokens_out:
            metrics.tokens.labels(served, "output").inc(response.tokens_out)
        cost = records.cost_of(snapshot, served, response.tokens_in, response.tokens_out)
        if cost:
            metrics.cost.labels(served).inc(cost)
        return cost

    # -- background ------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            try:
                await self._complete(item)
            except Exception:
                logger.exception("telemetry for request %r failed", item.request.request_id)
            finally:
                self._queue.task_done()

    async def _complete(self, item: _Finished) -> None:
        request, decided, response = item.request, item.decided, item.response
        snapshot = self._snapshot()
        decision = decided.decision if decided is not None else None
        user = hash_user(request.user)
        served = response.served_tier or (decision.tier if decision else "")
        match: RetryMatch | None = None
        if decided is not None and user and decided.retry_text:
            match = await self._retry_check(snapshot, request, decided, response, user, served)
        if decision is not None:
            await self._guarded(
                "put_request",
                self.state.put_request(
                    RequestSummary(
                        id=request.request_id,
                        time=request.started_ns / 1e9,
                        user=user,
                        tier=decision.tier,
                        served_tier=served,
                        classifier=decision.classifier,
                        rule=decision.rule,
                        chars=decision.chars,
                        messages=decision.messages,
                        status=response.status,
                        tokens_in=response.tokens_in,
                        tokens_out=response.tokens_out,
                        cost=item.cost,
                    )
                ),
            )
        self._end_span(item, match, served)
        if self.decision_log is not None:
            prompt = None
            if decided is not None and decided.prompt is not None:
                prompt = lambda: self._prompt(decided)  # noqa: E731
            self.decision_log.write(
                records.request_record(
                    request,
                    decided,
                    response,
                    cost=item.cost,
                    match=match,
                    user=user,
                    served=served,
                    trace_id=self.tracing.trace_id(item.trace.handle),
                    prompt=prompt,
                )
            )

    async def _retry_check(
        self,
        snapshot: Snapshot,
        request: RequestInfo,
        decided: DecisionInfo,
        response: ResponseInfo,
        user: str,
        served: str,
    ) -> RetryMatch | None:
        settings = snapshot.telemetry.retry
        current = RecentRequest(
            time=request.started_ns / 1e9,
            request_id=request.request_id,
            served_tier=served,
            classifier=decided.decision.classifier,
            status=response.status,
            sketch=sketch(decided.retry_text),
        )
        entries = await self._guarded("recent", self.state.recent(user)) or []
        match = find_retry(
            entries,
            current,
            top_tier=snapshot.top_tier,
            threshold=settings.similarity,
            window_s=settings.window_s,
        )
        await self._guarded("remember", self.state.remember(user, current))
        if match is not None:
            self.metrics.misroute.labels(FALSE_NEGATIVE, SIGNAL_RETRY, match.classifier).inc()
        return match

    async def _guarded(self, operation: str, call: Any) -> Any:
        timeout = self._snapshot().telemetry.state.timeout_ms / 1000
        try:
            if isinstance(self.state, MemoryState):
                # never waits: no timeout task needed (wait_for costs a task per call)
                return await call
            return await asyncio.wait_for(call, timeout)
        except Exception as exc:
            self.metrics.state_errors.labels(operation).inc()
            logger.warning("state %s failed: %s", operation, exc)
            return None

    def _end_span(self, item: _Finished, match: RetryMatch | None, served: str) -> None:
        span = item.trace.handle
        if span is None:
            return
        response = item.response
        attributes = records.finished_attributes(
            item.request, item.decided, response, item.cost, match, served
        )
        self.tracing.annotate(span, attributes)
        if match is not None:
            self.tracing.event(
                span,
                MISROUTE_EVENT,
                {
                    "cascade.misroute.kind": FALSE_NEGATIVE,
                    "cascade.misroute.signal": SIGNAL_RETRY,
                    "cascade.retry_of": match.request_id,
                    "cascade.similarity": round(match.similarity, 3),
                },
            )
        error = f"HTTP {response.status}" if response.status >= 500 else ""
        self.tracing.end(span, item.end_ns, error=error)

    def _prompt(self, decided: DecisionInfo) -> list[dict[str, str]]:
        return [
            {"role": role, "content": self.redact(text)} for role, text in (decided.prompt or ())
        ]

    # -- feedback --------------------------------------------------------------------------------

    async def feedback(self, request_id: str, score: int, comment: str) -> FeedbackResult:
        """`cascade.v1.Cascade/SubmitFeedback`: count it, judge it, log it."""
        snapshot = self._snapshot()
        summary = await self._guarded("get_request", self.state.get_request(request_id))
        if summary is None:
            return FeedbackResult(known=False, suspicion="")
        self.metrics.feedback.labels(str(score)).inc()
        suspicion = judge_feedback(
            summary, score, top_tier=snapshot.top_tier, rules=snapshot.telemetry.feedback
        )
        if suspicion:
            self.metrics.misroute.labels(suspicion, SIGNAL_FEEDBACK, summary.classifier).inc()
        if self.decision_log is not None:
            record = records.feedback_record(summary, score, comment, suspicion, time.time_ns())
            if snapshot.telemetry.capture_prompts and comment:
                record["comment"] = self.redact(comment)
            self.decision_log.write(record)
        return FeedbackResult(known=True, suspicion=suspicion)
