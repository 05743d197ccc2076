"""Response-cache replication through Redis (`cache.backend: redis`).

Every replica keeps its own bounded in-memory cache, and a lookup never waits on the network.
Redis carries what replicas tell each other: an entry one of them stored, or an invalidation.
Both go to one Redis stream (`<key_prefix>events`, trimmed to `stream_max_len`):

- a locally stored entry is queued (bounded; a full queue drops and counts) and a writer task
  `XADD`s it;
- a reader task `XREAD`s the stream and applies the other replicas' events; at start it replays
  the stream's recent entries (a new replica starts warm);
- a malformed or foreign-schema event is skipped and counted (`replicated_malformed`), an
  expired entry ignored.

Redis down: the writer drops what it cannot send, the reader retries with back-off, and
lookups go on against the local memory (misses for what other replicas stored meanwhile). Every
Redis call has the configured timeout. Counters: `cascade_cache_replicated_total{result}`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from extproc.config.snapshot import Snapshot
from extproc.core.cached_answer import Answer
from extproc.core.similarity import from_grams
from extproc.routing.cache_store import CacheStore, Entry

logger = logging.getLogger(__name__)

SCHEMA = 1
QUEUE_SIZE = 1000
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def encode(entry: Entry) -> bytes:
    answer = entry.answer
    grams = entry.shingled.grams.tobytes() if entry.shingled is not None else b""
    return orjson.dumps(
        {
            "v": SCHEMA,
            "key": entry.key,
            "tier": entry.tier,
            "created": entry.created,
            "expires": entry.expires,
            "bucket": entry.bucket,
            "partition": entry.partition,
            "grams": base64.b64encode(grams).decode(),
            "body": answer.body.decode("utf-8", "replace"),
            "content": answer.content,
            "model": answer.model,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "tool_calls": answer.tool_calls.decode(),
            "id": answer.identifier,
            "created_at": answer.created,
        }
    )


def decode(data: bytes) -> Entry | None:
    """An entry from the stream, or None when it is not one this version reads."""
    try:
        item = orjson.loads(data)
        if not isinstance(item, dict) or item.get("v") != SCHEMA:
            return None
        grams_raw = base64.b64decode(item["grams"], validate=True)
        if len(grams_raw) % 8:
            return None
        grams = np.frombuffer(grams_raw, dtype=np.uint64)
        bucket = item["bucket"]
        answer = Answer(
            body=str(item["body"]).encode(),
            content=str(item["content"]),
            model=str(item["model"]),
            finish_reason=str(item["finish_reason"]),
            prompt_tokens=int(item["prompt_tokens"]),
            completion_tokens=int(item["completion_tokens"]),
            tool_calls=str(item["tool_calls"]).encode(),
            identifier=str(item["id"]),
            created=int(item["created_at"]),
        )
        shingled = from_grams(np.sort(grams)) if grams.size and bucket else None
        return Entry(
            key=str(item["key"]),
            answer=answer,
            tier=str(item["tier"]),
            created=float(item["created"]),
            expires=float(item["expires"]),
            bucket=str(bucket) if shingled is not None else None,
            shingled=shingled,
            partition=str(item["partition"]),
        )
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return None


class CacheSync:
    """The two tasks of one replica; `start()` once the loop runs, `stop()` at shutdown."""

    def __init__(self, store: CacheStore, snapshot: Callable[[], Snapshot]) -> None:
        self.store = store
        self.snapshot = snapshot
        self.origin = uuid.uuid4().hex
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Any = None
        store.listeners.append(self._stored)
        store.clear_listeners.append(self._cleared)

    @property
    def stream(self) -> str:
        return self.snapshot().cache.redis.key_prefix + "events"

    def _offer(self, kind: str, data: bytes) -> None:
        try:
            self._queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            self.store.count("replicated_dropped")

    def _stored(self, entry: Entry) -> None:
        self._offer("entry", encode(entry))

    def _cleared(self) -> None:
        self._offer("clear", b"")

    def start(self) -> None:
        from redis import asyncio as redis_asyncio

        settings = self.snapshot().cache.redis
        timeout = settings.timeout_ms / 1000
        self._redis = redis_asyncio.Redis.from_url(
            settings.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._tasks = [
            asyncio.create_task(self._write(), name="cache-sync-write"),
            asyncio.create_task(self._read(), name="cache-sync-read"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def _write(self) -> None:
        while True:
            kind, data = await self._queue.get()
            settings = self.snapshot().cache.redis
            try:
                await self._redis.xadd(
                    self.stream,
                    {"origin": self.origin, "kind": kind, "data": data},
                    maxlen=settings.stream_max_len,
                    approximate=True,
                )
                self.store.count("replicated_sent")
            except Exception as exc:  # Redis down or slow: this event is lost, lookups go on
                self.store.count("replicated_send_error")
                logger.warning("cache replication: cannot send to Redis: %s", type(exc).__name__)

    async def _read(self) -> None:
        last = "0-0"  # first pass replays what the stream holds: a new replica starts warm
        failures = 0
        while True:
            try:
                replies = await self._redis.xread({self.stream: last}, count=500, block=1000)
                failures = 0
            except Exception as exc:
                self.store.count("replicated_receive_error")
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                logger.warning(
                    "cache replication: cannot read from Redis (%s); retrying in %.1fs",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            for _stream, events in replies or ():
                for event_id, fields in events:
                    last = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
                    self.apply(fields)

    def apply(self, fields: dict[bytes, bytes]) -> None:
        """One event from the stream (another replica's, or ours echoed back: skipped)."""
        if fields.get(b"origin", b"").decode(errors="replace") == self.origin:
            return
        kind = fields.get(b"kind", b"")
        if kind == b"clear":
            self.store.clear(local=False)
            self.store.count("replicated_cleared")
            return
        entry = decode(fields.get(b"data", b"")) if kind == b"entry" else None
        if entry is None:
            self.store.count("replicated_malformed")
            return
        if entry.expires <= self.store.clock():
            self.store.count("replicated_expired")
            return
        settings = self.snapshot().cache
        self.store.put(
            entry,
            max_entries=settings.max_entries,
            max_per_bucket=settings.semantic.max_per_bucket,
            local=False,
        )
        self.store.count("replicated_received")
