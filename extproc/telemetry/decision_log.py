"""The decision log: JSON lines, one record per request, written by a background thread.

`DecisionLog.write(record)` only puts the record on a bounded queue (a full queue drops it and
counts the drop); a daemon thread appends batches to the file and rotates it by size
(`PATH` → `PATH.1` → ... → `PATH.N`, like `logging.handlers.RotatingFileHandler`).

Record kinds (field `kind`):

- `request`: one per request, written when its answer ended (or its stream closed);
- `feedback`: written when feedback arrives for an earlier request, repeating that request's
  decision fields with the feedback and the suspicion it raised. Readers that want one row per
  request merge by `id` (the later record wins).

Prompt text appears only when `telemetry.capture_prompts` is on, in `messages_text` (a list of
`{role, content}` after the redaction hook). docs/observability.md lists every field.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from extproc.config.snapshot import DecisionLogSettings

logger = logging.getLogger(__name__)

#: Records written per batch at most, and the writer's idle wake-up interval.
BATCH = 256
_STOP = object()


class DecisionLog:
    def __init__(
        self, settings: DecisionLogSettings, on_drop: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self._queue: queue.Queue[object] = queue.Queue(settings.queue_size)
        self._on_drop = on_drop
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="cascade-decision-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            logger.warning("decision log queue still full at shutdown")
        self._thread.join(timeout)
        self._thread = None

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record queued so far is on disk (tests, shutdown)."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return
        done.wait(timeout)

    # -- writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        stream = self.path.open("ab")
        try:
            while True:
                item = self._queue.get()
                batch: list[bytes] = []
                events: list[threading.Event] = []
                stop = False
                for _ in range(BATCH):
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, threading.Event):
                        events.append(item)
                    else:
                        batch.append(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE))
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                else:
                    self._queue.put(item)  # the one taken beyond the batch goes back first
                if batch:
                    try:
                        stream = self._append(stream, batch)
                        self.written += len(batch)
                    except OSError:
                        logger.exception("decision log write failed (%d records lost)", len(batch))
                for event in events:
                    event.set()
                if stop:
                    return
        finally:
            stream.close()

    def _append(self, stream: Any, lines: list[bytes]) -> Any:
        """Write the lines, rotating first whenever the next one would pass `max_bytes`."""
        size = stream.tell()
        pending: list[bytes] = []
        for line in lines:
            if size + len(line) > self.settings.max_bytes and size > 0:
                stream.write(b"".join(pending))
                stream.close()
                self._rotate()
                stream = self.path.open("ab")
                size, pending = 0, []
            pending.append(line)
            size += len(line)
        stream.write(b"".join(pending))
        stream.flush()
        return stream

    def _rotate(self) -> None:
        backups = self.settings.backups
        if backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(backups - 1, 0, -1):
            source = self.path.with_name(f"{self.path.name}.{index}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
