"""Writing captured pairs (extproc/routing/capture.py) off the answer path.

`PairWriter.put` only puts a joined pair on a bounded queue (full: dropped and counted, never
blocking); a daemon thread turns it into the pair format `cascade judge` reads (the answers'
text taken from the raw bodies, every text through the redaction hook and cut to
`capture.max_text_bytes`), writes it to the sink, expires pairs whose other side did not come,
and enforces the retention limit:

- `jsonl` (default): `PATH`, rotated by size like the decision log (`PATH.1` ... `PATH.N`);
  rotated files whose last write is older than `capture.retention_s` are deleted, and the live
  file is rotated once it is that old, so no pair outlives twice the retention;
- `redis`: one Redis Stream entry per pair (field `pair`), `XADD ... MAXLEN ~ max_len`, and
  `XTRIM ... MINID` (now - retention) once a minute: shared by several replicas.

Metrics (`PairCollector`): `cascade_capture_pairs_total{result}` (`complete`, `missing_side`),
`cascade_capture_dropped_total{reason}` (`queue_full`, `pending_full`, `write_error`),
`cascade_capture_events_total{event}` (what the joiner saw), `cascade_capture_pending`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.config.capture import CaptureSettings, SinkSettings
from extproc.routing.capture import PairJoiner, answer_text
from extproc.telemetry.redact import Redactor

logger = logging.getLogger(__name__)

_STOP = object()
#: seconds between retention passes, and the writer's idle wake-up (expiring pairs)
RETENTION_EVERY = 60.0
TICK = 0.5


def cut(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` UTF-8 bytes (never inside a character)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def finish_pair(record: dict[str, Any], settings: CaptureSettings, redact: Redactor) -> bytes:
    """The JSON line of a joined pair: messages and answers redacted and cut."""
    limit = settings.max_text_bytes
    messages = []
    truncated = bool(record.get("messages_truncated"))
    for role, text in record.get("messages") or ():
        content, was_cut = cut(redact(text), limit)
        truncated = truncated or was_cut
        messages.append({"role": role, "content": content})
    out = dict(record)
    out["messages"] = messages
    out.pop("messages_truncated", None)
    if truncated:
        out["messages_truncated"] = True
    for name in ("primary", "shadow"):
        side = record.get(name)
        if side is None:
            continue
        side = dict(side)
        raw = side.pop("raw", None)
        truncated = bool(side.pop("raw_truncated", False))
        if raw is None:
            side["text"] = None
            side["text_missing"] = "not collected (the shadow was seen after the first chunk)"
        else:
            text = answer_text(raw)
            if text is not None:
                text, was_cut = cut(redact(text), limit)
                truncated = truncated or was_cut
            side["text"] = text
        if truncated:
            side["truncated"] = True
        out[name] = side
    return orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)


class Sink(Protocol):
    def write(self, lines: list[bytes]) -> None: ...

    def retain(self, now: float) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    def __init__(self, settings: SinkSettings, retention_s: int) -> None:
        self.settings = settings
        self.retention_s = retention_s
        self.path = Path(settings.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = self.path.open("ab")
        self._opened = self._age_start()

    def _age_start(self) -> float:
        try:
            return self.path.stat().st_ctime if self.path.stat().st_size else time.time()
        except OSError:
            return time.time()

    def write(self, lines: list[bytes]) -> None:
        size = self._stream.tell()
        for line in lines:
            if size + len(line) > self.settings.max_bytes and size > 0:
                self._rotate()
                size = 0
            self._stream.write(line)
            size += len(line)
        self._stream.flush()

    def _rotate(self) -> None:
        self._stream.close()
        backups = self.settings.backups
        if backups <= 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(backups - 1, 0, -1):
                source = self.path.with_name(f"{self.path.name}.{index}")
                if source.exists():
                    os.replace(source, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._stream = self.path.open("ab")
        self._opened = time.time()

    def retain(self, now: float) -> None:
        horizon = now - self.retention_s
        for index in range(1, self.settings.backups + 1):
            backup = self.path.with_name(f"{self.path.name}.{index}")
            try:
                if backup.stat().st_mtime < horizon:
                    backup.unlink()
            except FileNotFoundError:
                continue
        if self._opened < horizon and self._stream.tell() > 0:
            self._rotate()

    def close(self) -> None:
        self._stream.close()


class RedisSink:
    def __init__(self, settings: SinkSettings, retention_s: int) -> None:
        import redis

        self.settings = settings
        self.retention_s = retention_s
        timeout = settings.timeout_ms / 1000
        self.client = redis.Redis.from_url(
            settings.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def write(self, lines: list[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(
                self.settings.stream,
                {"pair": line.rstrip(b"\n")},
                maxlen=self.settings.max_len,
                approximate=True,
            )
        pipe.execute()

    def retain(self, now: float) -> None:
        horizon_ms = int((now - self.retention_s) * 1000)
        # exact: once a minute, costs what it removes (approximate trims only whole nodes)
        self.client.xtrim(self.settings.stream, minid=horizon_ms, approximate=False)

    def close(self) -> None:
        self.client.close()


def open_sink(settings: CaptureSettings) -> Sink:
    if settings.sink.kind == "redis":
        return RedisSink(settings.sink, settings.retention_s)
    return JsonlSink(settings.sink, settings.retention_s)


class PairWriter:
    """The bounded queue and the writer thread; `put` is the joiner's `emit`."""

    def __init__(self, settings: CaptureSettings, sink: Sink, redact: Redactor) -> None:
        self.settings = settings
        self.sink = sink
        self.redact = redact
        self.joiner = PairJoiner(self.put)
        self.joiner.join_timeout = settings.join_timeout_s
        self._queue: queue.Queue[object] = queue.Queue(settings.queue_size)
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.write_errors = 0

    def start(self) -> PairWriter:
        self._thread = threading.Thread(target=self._run, name="cascade-pairs", daemon=True)
        self._thread.start()
        return self

    def put(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Expire what is due, then wait until every pair queued so far is written (tests)."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return
        done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            logger.warning("capture queue still full at shutdown")
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        last_retention = 0.0
        try:
            while True:
                try:
                    item = self._queue.get(timeout=TICK)
                except queue.Empty:
                    item = None
                self.joiner.expire()  # may put expired pairs on the queue
                batch: list[bytes] = []
                events: list[threading.Event] = []
                stop = False
                while item is not None:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, threading.Event):
                        events.append(item)
                    elif isinstance(item, dict):
                        batch.append(self._line(item))
                    if len(batch) >= 256:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        item = None
                self._write(batch)
                now = time.time()
                if now - last_retention >= RETENTION_EVERY:
                    last_retention = now
                    self._retain(now)
                for event in events:
                    event.set()
                if stop:
                    return
        finally:
            self.sink.close()

    def _line(self, record: dict[str, Any]) -> bytes:
        return finish_pair(record, self.settings, self.redact)

    def _write(self, batch: list[bytes]) -> None:
        if not batch:
            return
        try:
            self.sink.write(batch)
            self.written += len(batch)
        except Exception:
            self.write_errors += len(batch)
            logger.exception("capture sink write failed (%d pairs lost)", len(batch))

    def _retain(self, now: float) -> None:
        try:
            self.sink.retain(now)
        except Exception:
            logger.exception("capture retention pass failed")


class PairCollector(Collector):
    """The capture's counters at scrape time (plain integers, read without a lock)."""

    def __init__(self, writer: PairWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        writer, counts = self.writer, dict(self.writer.joiner.counts)
        pairs = CounterMetricFamily(
            "cascade_capture_pairs", "Mirrored pairs captured", labels=["result"]
        )
        pairs.add_metric(["complete"], counts.get("pairs", 0))
        pairs.add_metric(["missing_side"], counts.get("pairs_missing_side", 0))
        yield pairs
        dropped = CounterMetricFamily(
            "cascade_capture_dropped", "Captured pairs lost, by reason", labels=["reason"]
        )
        dropped.add_metric(["queue_full"], writer.dropped)
        dropped.add_metric(["pending_full"], counts.get("dropped_pending", 0))
        dropped.add_metric(["write_error"], writer.write_errors)
        yield dropped
        events = CounterMetricFamily(
            "cascade_capture_events", "What the pair joiner saw", labels=["event"]
        )
        for name, value in sorted(counts.items()):
            if name not in ("pairs", "pairs_missing_side", "dropped_pending"):
                events.add_metric([name], value)
        yield events
        yield GaugeMetricFamily(
            "cascade_capture_pending", "Pairs waiting for a side", value=writer.joiner.pending
        )
        yield CounterMetricFamily(
            "cascade_capture_written", "Pairs written to the sink", value=writer.written
        )


def start_capture(
    settings: CaptureSettings, redact: Redactor, registry: CollectorRegistry | None
) -> PairWriter | None:
    """The running writer when capture is on, else None; its collector joins `registry`."""
    if not settings.enabled:
        return None
    writer = PairWriter(settings, open_sink(settings), redact).start()
    if registry is not None:
        registry.register(PairCollector(writer))
    return writer
