"""Joining the two answers of a mirrored request into one pair (`capture:` in the config).

Envoy mirrors a share of a tier's requests (`tiers[].mirror`): the client's request (the
primary) and a shadow copy with `x-cascade-shadow-of`, both with the same `x-request-id`. Three
moments meet here, all on the server's event loop (the writer thread only calls `expire`):

1. the classifier decided a request for a captured tier: `primary_tap` remembers the request id
   (sampled by `capture.sample`, bounded by `capture.max_pending`) and returns the tap that
   will collect the primary's answer on the response path;
2. the per-attempt role sees the shadow's request headers: `shadow_tap` returns a tap only for a
   request id remembered in 1 (a client cannot make the server capture anything by sending the
   header: the classifier strips client `x-cascade-*` headers, and an unknown id is ignored);
3. each tap, when its answer ended, hands its side over; when both are in, the pair is emitted.

A primary whose shadow was never seen was not mirrored: nothing is kept. The join key comes from
the client when Envoy keeps a client's `x-request-id`: a second request, or a second shadow,
with an id that is waiting marks the pair as conflicting, and it is dropped (counted), so a
reused id can never join one request's answer with another's. A pair whose other side
has not come within `capture.join_timeout_s` is emitted with that side null and `missing` saying
why. Emitting only puts the pair on the sink's bounded queue; text is redacted, cut and
serialised on the writer thread. Counters (`counts`) are read by the metrics collector.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.config.snapshot import Snapshot
from extproc.core.chat import ChatRequest
from extproc.core.classify import Decision
from extproc.routing.observer import RequestInfo

Emit = Callable[[dict[str, Any]], None]

#: raw answer bytes kept per side, as a multiple of `capture.max_text_bytes` (JSON and SSE
#: framing around the text)
RAW_FACTOR = 6


def sampled(request_id: str, percent: float) -> bool:
    if percent >= 100:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100 < percent


@dataclass(slots=True)
class _Entry:
    created: float
    record: dict[str, Any]
    shadow_seen: bool = False
    #: a second request or shadow came with this id: the pair cannot be trusted, it is dropped
    conflict: bool = False
    primary: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None


@dataclass(slots=True)
class AnswerBuffer:
    """The raw bytes of one answer, up to a cap."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk


def answer_text(body: bytes) -> str | None:
    """The assistant text of a chat completion: JSON (`message.content`, else `refusal`) or
    an SSE stream (the `delta.content` pieces joined). None when there is none."""
    stripped = body.lstrip()
    if stripped.startswith(b"data:"):
        pieces: list[str] = []
        for line in stripped.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            piece = _choice_text(_json(data), "delta")
            if piece:
                pieces.append(piece)
        return "".join(pieces) if pieces else None
    return _choice_text(_json(stripped), "message")


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _choice_text(document: Any, key: str) -> str | None:
    if not isinstance(document, dict):
        return None
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get(key)
    if not isinstance(message, dict):
        return None
    for name in ("content", "refusal"):
        if isinstance(message.get(name), str):
            return str(message[name])
    return None


def _bounded(
    messages: tuple[tuple[str, str], ...], snapshot: Snapshot
) -> tuple[tuple[str, str], ...]:
    """The prompt held while a mirrored pair waits, each text cut to `max_text_bytes`
    characters (the writer cuts it to bytes), so a waiting pair holds a bounded prompt."""
    limit = snapshot.capture.max_text_bytes
    if all(len(text) <= limit for _, text in messages):
        return messages
    return tuple((role, text[:limit]) for role, text in messages)


class PairJoiner:
    """The pairs waiting for a side; thread-safe (one lock, held for dictionary work only)."""

    def __init__(self, emit: Emit, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._pending: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.join_timeout = 30.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def primary_tap(
        self, snapshot: Snapshot, info: RequestInfo, decision: Decision, chat: ChatRequest
    ) -> PrimaryTap | None:
        """A tap for a request decided for a captured tier (step 1), or None."""
        settings = snapshot.capture
        request_id = info.request_id
        if decision.tier not in settings.tiers or not request_id:
            return None
        if not sampled(request_id, settings.sample):
            return None
        self.join_timeout = settings.join_timeout_s
        record: dict[str, Any] = {
            "id": request_id,
            "time": round(time.time(), 3),
            "messages": chat.messages,
            "decision": {
                "tier": decision.tier,
                "rule": decision.rule,
                "classifier": decision.classifier,
            },
        }
        if settings.segment_header:
            record["segment"] = {"user": info.headers.get(settings.segment_header, "")}
        with self._lock:
            self._expire_locked()
            if request_id in self._pending:
                self._pending[request_id].conflict = True
                self.counts["duplicate_id"] += 1
                return None
            if len(self._pending) >= settings.max_pending:
                self.counts["dropped_pending"] += 1
                return None
            self._pending[request_id] = _Entry(self.clock(), record)
        tier = snapshot.tier(decision.tier)
        return PrimaryTap(self, request_id, tier.name, tier.model, settings.max_text_bytes)

    def shadow_tap(
        self, snapshot: Snapshot, request_id: str, tier: str, model: str
    ) -> ShadowTap | None:
        """A tap for a shadow copy whose primary is waiting (step 2), or None."""
        with self._lock:
            entry = self._pending.get(request_id)
            if entry is None:
                self.counts["shadow_unexpected"] += 1
                return None
            if entry.shadow_seen:  # one shadow per request: a second one means a reused id
                entry.conflict = True
                self.counts["duplicate_id"] += 1
                return None
            entry.shadow_seen = True
            bounded = _bounded(entry.record["messages"], snapshot)
            if bounded is not entry.record["messages"]:
                entry.record["messages"] = bounded
                entry.record["messages_truncated"] = True
        self.counts["shadows"] += 1
        return ShadowTap(self, request_id, tier, model, snapshot.capture.max_text_bytes)

    def shadow_seen(self, request_id: str) -> bool:
        entry = self._pending.get(request_id)
        return entry is not None and entry.shadow_seen

    def side_done(self, request_id: str, name: str, side: dict[str, Any]) -> None:
        """One side's answer ended (step 3)."""
        with self._lock:
            entry = self._pending.get(request_id)
            if entry is None:
                self.counts[f"{name}_late"] += 1  # expired (or written) before it ended
                return
            if name == "primary" and not entry.shadow_seen:
                del self._pending[request_id]  # not mirrored: nothing is kept
                self.counts["unmirrored"] += 1
                return
            if entry.conflict:
                del self._pending[request_id]
                self.counts["dropped_conflict"] += 1
                return
            setattr(entry, name, side)
            if entry.primary is None or entry.shadow is None:
                return
            del self._pending[request_id]
        self._emit(entry, "")

    def expire(self) -> None:
        with self._lock:
            expired = self._expire_locked()
        for entry in expired:
            missing = "shadow" if entry.shadow is None else "primary"
            self._emit(entry, f"{missing}: no answer within {self.join_timeout:g} s")

    def drain(self) -> None:
        """At shutdown: every waiting pair with one side in is written with the other missing."""
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
        for entry in entries:
            if entry.conflict or not entry.shadow_seen:
                continue
            if entry.primary is not None or entry.shadow is not None:
                missing = "shadow" if entry.shadow is None else "primary"
                self._emit(entry, f"{missing}: the server stopped before it ended")

    def _expire_locked(self) -> list[_Entry]:
        expired: list[_Entry] = []
        deadline = self.clock() - self.join_timeout
        while self._pending:
            request_id, entry = next(iter(self._pending.items()))
            if entry.created > deadline:
                break
            del self._pending[request_id]
            if entry.conflict:
                self.counts["dropped_conflict"] += 1
            elif entry.shadow_seen and (entry.primary is not None or entry.shadow is not None):
                expired.append(entry)
            else:
                self.counts["unmirrored" if not entry.shadow_seen else "expired_empty"] += 1
        return expired

    def _emit(self, entry: _Entry, missing: str) -> None:
        record = entry.record
        record["primary"] = entry.primary
        record["shadow"] = entry.shadow
        if missing:
            record["missing"] = missing
            self.counts["pairs_missing_side"] += 1
        else:
            self.counts["pairs"] += 1
        self.emit(record)


class _Tap:
    """Collects one side's answer; `done` hands it to the joiner once."""

    name = ""
    __slots__ = ("buffer", "closed", "joiner", "model", "request_id", "started", "status", "tier")

    def __init__(
        self, joiner: PairJoiner, request_id: str, tier: str, model: str, cap: int
    ) -> None:
        self.joiner = joiner
        self.request_id = request_id
        self.tier = tier
        self.model = model
        self.buffer: AnswerBuffer | None = AnswerBuffer(cap * RAW_FACTOR)
        self.started = time.perf_counter()
        self.status = 0
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        if self.buffer is not None and chunk:
            self.buffer.feed(chunk)

    def done(
        self,
        *,
        complete: bool,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        model: str = "",
    ) -> None:
        if self.closed:
            return
        self.closed = True
        buffer = self.buffer
        side: dict[str, Any] = {
            "tier": self.tier,
            "model": model or self.model,
            "status": self.status or None,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 1),
            "complete": complete,
            "raw": bytes(buffer.data) if buffer is not None else None,
            "raw_truncated": buffer.truncated if buffer is not None else False,
        }
        if tokens_in is not None:
            side["tokens_in"] = tokens_in
        if tokens_out is not None:
            side["tokens_out"] = tokens_out
        self.joiner.side_done(self.request_id, self.name, side)


class PrimaryTap(_Tap):
    """The client's answer, fed by the classifier's response path. It stops collecting at the
    first chunk when no shadow has been seen (the request was not mirrored)."""

    name = "primary"
    __slots__ = ("checked",)

    def __init__(
        self, joiner: PairJoiner, request_id: str, tier: str, model: str, cap: int
    ) -> None:
        super().__init__(joiner, request_id, tier, model, cap)
        self.checked = False

    def feed(self, chunk: bytes) -> None:
        if not self.checked:
            self.checked = True
            if not self.joiner.shadow_seen(self.request_id):
                self.buffer = None
        super().feed(chunk)


class ShadowTap(_Tap):
    """The shadow's answer, fed by the per-attempt role on the mirror's cluster."""

    name = "shadow"
    __slots__ = ()
