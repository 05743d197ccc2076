"""`Recorder`: the server's `Observer`. Metrics, spans, misroute signals and the decision log.

On the answer path it only updates in-memory counters and span attributes. Everything that may
wait (the state backend, the log file, span export) happens in background workers fed by a
bounded queue; a full queue drops the record and counts it
(`cascade_telemetry_dropped_total{sink="recorder"}`), it never slows an answer down.

Per request, in the background, once its answer ended: the retry-pattern check against the
user's recent requests, remembering this request for later checks and for `SubmitFeedback`,
ending the span (with its real end time) and writing the decision-log record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from extproc.config.snapshot import DecisionLogSettings, Snapshot
from extproc.core.classify import Decision
from extproc.routing.processor import RequestInfo, ResponseInfo
from extproc.telemetry.decision_log import DecisionLog
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
from extproc.telemetry.redact import Redactor, load_redactor
from extproc.telemetry.tracing import MISROUTE_EVENT, Tracing, langfuse_tags

logger = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
WORKERS = 4
SIGNAL_RETRY = "retry"
SIGNAL_FEEDBACK = "feedback"


@dataclass(slots=True)
class _Finished:
    info: RequestInfo
    response: ResponseInfo
    cost: float | None
    end_ns: int


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    known: bool
    suspicion: str  # "", false_negative, false_positive


def cost_of(snapshot: Snapshot, tier: str, tokens_in: int | None, tokens_out: int | None) -> float:
    """Dollars for an answer: token prices, plus `per_hour` spread over output throughput."""
    if tier not in snapshot.tier_names:
        return 0.0
    price = snapshot.tier(tier).price
    tin, tout = tokens_in or 0, tokens_out or 0
    return (
        price.input_per_mtok * tin / 1e6
        + price.output_per_mtok * tout / 1e6
        + price.per_hour / 3600 * tout / snapshot.telemetry.tokens_per_second
    )


def _finish_without_waiting(coroutine: Coroutine[Any, Any, None]) -> bool:
    """Run a coroutine that never suspends to its end; False (and closed) if it did suspend."""
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    except Exception:
        logger.exception("telemetry completion failed")
        return True
    coroutine.close()
    return False


class Recorder:
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

    def started(self, request: RequestInfo) -> None:
        if self.tracing.enabled:
            request.trace = self.tracing.start(request.headers, request.started_ns)

    def decided(self, decision: Decision, seconds: float, request: RequestInfo) -> None:
        metrics = self.metrics
        metrics.decisions.labels(decision.tier, decision.classifier, decision.rule).inc()
        metrics.classify_duration.observe(seconds)
        span = request.trace
        if span is None:
            return
        self.tracing.annotate(
            span,
            {
                "cascade.tier": decision.tier,
                "cascade.classifier": decision.classifier,
                "cascade.rule": decision.rule,
                "cascade.reason": decision.reason,
                "cascade.keywords": list(decision.keywords),
                "cascade.chars": decision.chars,
                "cascade.bytes": decision.bytes,
                "cascade.messages": decision.messages,
                "cascade.classify_us": round(seconds * 1e6, 1),
                "cascade.request_id": request.request_id,
                "http.request.method": request.method,
                "url.path": request.path,
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": request.model or None,
                "langfuse.trace.tags": langfuse_tags(
                    decision.tier,
                    decision.keywords,
                    decision.messages,
                    decision.classifier,
                    decision.rule,
                ),
                "langfuse.user.id": hash_user(request.user) or None,
            },
        )
        if request.prompt is not None:
            self.tracing.annotate(span, {"gen_ai.input.messages": self._prompt_json(request)})

    def propagation(self, request: RequestInfo) -> list[tuple[str, str]]:
        return self.tracing.inject(request.trace) if request.trace is not None else []

    def rejected(self, kind: str, request: RequestInfo) -> None:
        self.metrics.parse_failures.labels(kind).inc()
        self.tracing.annotate(request.trace, {"cascade.parse_failure": kind})

    def classifier_failed(self, request: RequestInfo) -> None:
        self.metrics.classifier_errors.inc()

    def fell_back(self, from_tier: str, to_tier: str, request: RequestInfo) -> None:
        self.metrics.fallbacks.labels(from_tier, to_tier).inc()

    def finished(self, request: RequestInfo, response: ResponseInfo) -> None:
        snapshot = self._snapshot()
        decision = request.decision
        cost: float | None = None
        if decision is not None and response.observed:
            cost = self._response_metrics(snapshot, decision, request, response)
        end = response.ended if response.ended is not None else time.perf_counter()
        end_ns = request.started_ns + int((end - request.started) * 1e9)
        item = _Finished(request, response, cost, end_ns)
        if self._queue is None:
            return
        if isinstance(self.state, MemoryState) and self._queue.empty():
            # Nothing here can wait with in-memory state: finish now, without a task switch.
            if _finish_without_waiting(self._complete(item)):
                return
            logger.error(
                "in-memory telemetry completion suspended (request %s)", request.request_id
            )
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.telemetry_dropped.labels("recorder").inc()
            self.tracing.end(request.trace, end_ns)

    def _response_metrics(
        self, snapshot: Snapshot, decision: Decision, request: RequestInfo, response: ResponseInfo
    ) -> float | None:
        metrics = self.metrics
        served = response.served_tier or decision.tier
        metrics.responses.labels(
            decision.tier, served, response.cluster, str(response.status), decision.classifier
        ).inc()
        if response.first_chunk is not None:
            metrics.ttft.labels(served, decision.classifier).observe(
                response.first_chunk - request.started
            )
        if response.complete and response.ended is not None:
            metrics.response_duration.labels(served, decision.classifier).observe(
                response.ended - request.started
            )
        meter = response.meter
        if meter.tokens_in is None and meter.tokens_out is None:
            if response.complete and response.status and response.status < 400:
                metrics.usage_missing.labels(served).inc()
            return None
        if meter.tokens_in:
            metrics.tokens.labels(served, "input").inc(meter.tokens_in)
        if meter.tokens_out:
            metrics.tokens.labels(served, "output").inc(meter.tokens_out)
        cost = cost_of(snapshot, served, meter.tokens_in, meter.tokens_out)
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
                logger.exception("telemetry for request %s failed", item.info.request_id)
            finally:
                self._queue.task_done()

    async def _complete(self, item: _Finished) -> None:
        info, response = item.info, item.response
        snapshot = self._snapshot()
        decision = info.decision
        user = hash_user(info.user)
        served = response.served_tier or (decision.tier if decision else "")
        match: RetryMatch | None = None
        if decision is not None and user and info.retry_text:
            match = await self._retry_check(snapshot, info, response, user, served)
        if decision is not None:
            await self._guarded(
                "put_request",
                self.state.put_request(
                    RequestSummary(
                        id=info.request_id,
                        time=info.started_ns / 1e9,
                        user=user,
                        tier=decision.tier,
                        served_tier=served,
                        classifier=decision.classifier,
                        rule=decision.rule,
                        chars=decision.chars,
                        messages=decision.messages,
                        status=response.status,
                        tokens_in=response.meter.tokens_in,
                        tokens_out=response.meter.tokens_out,
                        cost=item.cost,
                    )
                ),
            )
        self._end_span(info, response, item, match, served)
        if self.decision_log is not None:
            self.decision_log.write(self._record(info, response, item.cost, match, user, served))

    async def _retry_check(
        self,
        snapshot: Snapshot,
        info: RequestInfo,
        response: ResponseInfo,
        user: str,
        served: str,
    ) -> RetryMatch | None:
        settings = snapshot.telemetry.retry
        decision = info.decision
        assert decision is not None
        current = RecentRequest(
            time=info.started_ns / 1e9,
            request_id=info.request_id,
            served_tier=served,
            classifier=decision.classifier,
            status=response.status,
            sketch=sketch(info.retry_text),
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

    def _end_span(
        self,
        info: RequestInfo,
        response: ResponseInfo,
        item: _Finished,
        match: RetryMatch | None,
        served: str,
    ) -> None:
        span = info.trace
        if span is None:
            return
        decision = info.decision
        meter = response.meter
        attributes: dict[str, Any] = {
            "cascade.served_tier": served or None,
            "cascade.served_cluster": response.cluster or None,
            "cascade.fallback": bool(decision and served and served != decision.tier),
            "cascade.complete": response.complete,
            "cascade.cost_usd": item.cost,
            "cascade.fn_suspect": match is not None,
            "gen_ai.usage.input_tokens": meter.tokens_in,
            "gen_ai.usage.output_tokens": meter.tokens_out,
            "gen_ai.response.model": meter.model or None,
        }
        if response.status:
            attributes["http.response.status_code"] = response.status
        if response.first_chunk is not None:
            attributes["cascade.ttft_ms"] = round((response.first_chunk - info.started) * 1e3, 3)
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

    def _prompt_json(self, info: RequestInfo) -> str:
        import orjson

        return orjson.dumps(self._prompt_messages(info)).decode()

    def _prompt_messages(self, info: RequestInfo) -> list[dict[str, str]]:
        return [{"role": role, "content": self.redact(text)} for role, text in (info.prompt or ())]

    def _record(
        self,
        info: RequestInfo,
        response: ResponseInfo,
        cost: float | None,
        match: RetryMatch | None,
        user: str,
        served: str,
    ) -> dict[str, Any]:
        decision = info.decision
        meter = response.meter
        record: dict[str, Any] = {
            "kind": "request",
            "id": info.request_id,
            "time": _iso(info.started_ns),
            "user": user or None,
            "tier": decision.tier if decision else None,
            "classifier": decision.classifier if decision else None,
            "rule": decision.rule if decision else None,
            "reason": decision.reason if decision else None,
            "keywords": list(decision.keywords) if decision else [],
            "chars": decision.chars if decision else 0,
            "bytes": decision.bytes if decision else 0,
            "messages": decision.messages if decision else 0,
            "model": info.model or None,
            "served_tier": served or None,
            "cluster": response.cluster or None,
            "status": response.status or None,
            "complete": response.complete,
            "fallback": bool(decision and served and served != decision.tier),
            "ttft_ms": _ms(response.first_chunk, info.started),
            "duration_ms": _ms(response.ended, info.started),
            "tokens_in": meter.tokens_in,
            "tokens_out": meter.tokens_out,
            "cost": cost,
            "fn_suspect": match is not None,
            "fp_suspect": False,
            "signals": [SIGNAL_RETRY] if match is not None else [],
            "trace_id": self.tracing.trace_id(info.trace) or None,
        }
        if match is not None:
            record["retry_of"] = match.request_id
            record["similarity"] = round(match.similarity, 3)
        if info.prompt is not None:
            record["messages_text"] = self._prompt_messages(info)
        return record

    # -- feedback --------------------------------------------------------------------------------

    async def feedback(self, request_id: str, score: int, comment: str) -> FeedbackResult:
        """`cascade.v1.Cascade/SubmitFeedback`: count it, judge it, log it."""
        snapshot = self._snapshot()
        self.metrics.feedback.labels(str(score)).inc()
        summary = await self._guarded("get_request", self.state.get_request(request_id))
        if summary is None:
            return FeedbackResult(known=False, suspicion="")
        suspicion = judge_feedback(
            summary, score, top_tier=snapshot.top_tier, rules=snapshot.telemetry.feedback
        )
        if suspicion:
            self.metrics.misroute.labels(suspicion, SIGNAL_FEEDBACK, summary.classifier).inc()
        if self.decision_log is not None:
            record: dict[str, Any] = {
                "kind": "feedback",
                "id": summary.id,
                "time": _iso(time.time_ns()),
                "request_time": _iso(int(summary.time * 1e9)),
                "user": summary.user or None,
                "tier": summary.tier,
                "classifier": summary.classifier,
                "rule": summary.rule,
                "chars": summary.chars,
                "messages": summary.messages,
                "served_tier": summary.served_tier,
                "status": summary.status or None,
                "tokens_in": summary.tokens_in,
                "tokens_out": summary.tokens_out,
                "cost": summary.cost,
                "score": score,
                "comment_chars": len(comment),
                "fn_suspect": suspicion == FALSE_NEGATIVE,
                "fp_suspect": bool(suspicion) and suspicion != FALSE_NEGATIVE,
                "signals": [SIGNAL_FEEDBACK] if suspicion else [],
            }
            if snapshot.telemetry.capture_prompts and comment:
                record["comment"] = self.redact(comment)
            self.decision_log.write(record)
        return FeedbackResult(known=True, suspicion=suspicion)


def _iso(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(end: float | None, start: float) -> float | None:
    return None if end is None else round((end - start) * 1e3, 3)
