"""Online misroute signals: the retry pattern, feedback rules, and the state they need.

**Retry pattern** (suspected false negative): a request from the same user (hashed key) whose
last user message is similar (≥ `telemetry.retry.similarity`, default 0.8) to one that user
sent within `window_s` (default 300 s) and that was answered by a tier below the top one. The
retry is flagged, with the id of the request it retries.

Similarity is the Jaccard index of the two texts' sets of character trigrams (lower-cased,
whitespace collapsed), estimated from bottom-k sketches: the `SKETCH_SIZE` smallest CRC-32
values of each set. Texts with fewer distinct trigrams are compared exactly. A sketch is a few
hundred bytes and does not contain the text; the text itself is never stored.

**Feedback**: a negative score on an answer served below the top tier is a suspected false
negative; a non-negative score on a top-tier answer to a short prompt with a short answer
(`telemetry.feedback`) a suspected false positive.

**State** lives in this process (`MemoryState`, bounded, least recently used dropped first) or
in Redis (`RedisState`) so that several replicas see each other's requests. Every call is
async and bounded by a timeout; callers run them in the background, never on an ext_proc answer.
"""

from __future__ import annotations

import array
import base64
import hashlib
import heapq
import os
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson

from extproc.config.snapshot import FeedbackSettings, StateSettings

SKETCH_SIZE = 128
SHINGLE = 3

FALSE_NEGATIVE = "false_negative"
FALSE_POSITIVE = "false_positive"


# ---------------------------------------------------------------------------------------------
# similarity


def sketch(text: str) -> tuple[int, ...]:
    """Bottom-k sketch (sorted) of the text's character trigrams."""
    low = " ".join(text.lower().split())
    if not low:
        return ()
    if len(low) < SHINGLE:
        shingles = {low}
    else:
        shingles = {low[i : i + SHINGLE] for i in range(len(low) - SHINGLE + 1)}
    hashes = {zlib.crc32(s.encode("utf-8")) for s in shingles}
    return tuple(heapq.nsmallest(SKETCH_SIZE, hashes))


def similarity(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Estimated Jaccard index of the sets behind two sketches (exact for small sets)."""
    if not a or not b:
        return 0.0
    union = heapq.nsmallest(SKETCH_SIZE, set(a) | set(b))
    if not union:
        return 0.0
    sa, sb = set(a), set(b)
    both = sum(1 for value in union if value in sa and value in sb)
    return both / len(union)


def pack_sketch(values: tuple[int, ...]) -> str:
    return base64.b64encode(array.array("I", values).tobytes()).decode("ascii")


def unpack_sketch(text: str) -> tuple[int, ...]:
    data = array.array("I")
    data.frombytes(base64.b64decode(text))
    return tuple(data)


def hash_user(user: str) -> str:
    """A stable, one-way id for a user key (keyed by `CASCADE_USER_HASH_KEY` when set)."""
    if not user:
        return ""
    key = os.environ.get("CASCADE_USER_HASH_KEY", "").encode()[:64]
    return hashlib.blake2b(user.encode("utf-8"), digest_size=12, key=key).hexdigest()


# ---------------------------------------------------------------------------------------------
# what is remembered


@dataclass(frozen=True, slots=True)
class RecentRequest:
    """One earlier request of a user, for the retry pattern."""

    time: float  # wall clock, seconds
    request_id: str
    served_tier: str
    classifier: str
    status: int
    sketch: tuple[int, ...]

    def dump(self) -> bytes:
        return orjson.dumps(
            {
                "t": self.time,
                "id": self.request_id,
                "tier": self.served_tier,
                "c": self.classifier,
                "s": self.status,
                "k": pack_sketch(self.sketch),
            }
        )

    @classmethod
    def load(cls, data: bytes | str) -> RecentRequest:
        d = orjson.loads(data)
        return cls(d["t"], d["id"], d["tier"], d["c"], d["s"], unpack_sketch(d["k"]))


@dataclass(frozen=True, slots=True)
class RetryMatch:
    request_id: str
    similarity: float
    classifier: str
    served_tier: str


def find_retry(
    entries: list[RecentRequest],
    current: RecentRequest,
    *,
    top_tier: str,
    threshold: float,
    window_s: float,
) -> RetryMatch | None:
    """The most similar earlier request answered below the top tier, if any reaches threshold."""
    best: RetryMatch | None = None
    for entry in entries:
        if entry.request_id == current.request_id:
            continue
        if not current.time - window_s <= entry.time <= current.time:
            continue
        if entry.served_tier == top_tier or entry.status >= 400:
            continue
        score = similarity(entry.sketch, current.sketch)
        if score >= threshold and (best is None or score > best.similarity):
            best = RetryMatch(entry.request_id, score, entry.classifier, entry.served_tier)
    return best


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """What `SubmitFeedback` needs to judge a past request (no text)."""

    id: str
    time: float
    user: str
    tier: str
    served_tier: str
    classifier: str
    rule: str
    chars: int
    messages: int
    status: int
    tokens_in: int | None
    tokens_out: int | None
    cost: float | None

    def dump(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def load(cls, data: bytes | str) -> RequestSummary:
        return cls(**orjson.loads(data))


def judge_feedback(
    summary: RequestSummary, score: int, *, top_tier: str, rules: FeedbackSettings
) -> str:
    """`false_negative`, `false_positive` or "" for a score on a known request."""
    served = summary.served_tier or summary.tier
    if score < 0 and served != top_tier:
        return FALSE_NEGATIVE
    if (
        score >= 0
        and served == top_tier
        and summary.chars <= rules.short_prompt_chars
        and (summary.tokens_out is None or summary.tokens_out <= rules.cheap_output_tokens)
    ):
        return FALSE_POSITIVE
    return ""


# ---------------------------------------------------------------------------------------------
# state backends


class State(Protocol):
    async def recent(self, user: str) -> list[RecentRequest]: ...

    async def remember(self, user: str, entry: RecentRequest) -> None: ...

    async def put_request(self, summary: RequestSummary) -> None: ...

    async def get_request(self, request_id: str) -> RequestSummary | None: ...

    async def close(self) -> None: ...


class MemoryState:
    """Bounded in-process state: `max_users` users × `per_user` requests, `max_requests` ids."""

    def __init__(self, settings: StateSettings, per_user: int = 8, window_s: float = 300) -> None:
        self.settings = settings
        self.per_user = per_user
        self.window_s = window_s
        self._users: OrderedDict[str, deque[RecentRequest]] = OrderedDict()
        self._requests: OrderedDict[str, tuple[float, RequestSummary]] = OrderedDict()

    async def recent(self, user: str) -> list[RecentRequest]:
        entries = self._users.get(user)
        if entries is None:
            return []
        horizon = time.time() - self.window_s
        return [entry for entry in entries if entry.time >= horizon]

    async def remember(self, user: str, entry: RecentRequest) -> None:
        entries = self._users.get(user)
        if entries is None:
            entries = self._users[user] = deque(maxlen=self.per_user)
            while len(self._users) > self.settings.max_users:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user)
        entries.append(entry)

    async def put_request(self, summary: RequestSummary) -> None:
        expires = time.time() + self.settings.request_ttl_s
        self._requests[summary.id] = (expires, summary)
        self._requests.move_to_end(summary.id)
        while len(self._requests) > self.settings.max_requests:
            self._requests.popitem(last=False)

    async def get_request(self, request_id: str) -> RequestSummary | None:
        found = self._requests.get(request_id)
        if found is None or found[0] < time.time():
            return None
        return found[1]

    async def close(self) -> None:
        self._users.clear()
        self._requests.clear()


class RedisState:
    """State in Redis: a capped, expiring list per user and one expiring key per request."""

    def __init__(self, settings: StateSettings, per_user: int = 8, window_s: float = 300) -> None:
        from redis import asyncio as redis_asyncio

        self.settings = settings
        self.per_user = per_user
        self.window_s = window_s
        timeout = settings.timeout_ms / 1000
        self._redis: Any = redis_asyncio.Redis.from_url(
            settings.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._prefix = settings.key_prefix

    def _user_key(self, user: str) -> str:
        return f"{self._prefix}user:{user}"

    def _request_key(self, request_id: str) -> str:
        return f"{self._prefix}req:{request_id}"

    async def recent(self, user: str) -> list[RecentRequest]:
        raw = await self._redis.lrange(self._user_key(user), 0, self.per_user - 1)
        horizon = time.time() - self.window_s
        entries = [RecentRequest.load(item) for item in raw]
        return [entry for entry in entries if entry.time >= horizon]

    async def remember(self, user: str, entry: RecentRequest) -> None:
        key = self._user_key(user)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lpush(key, entry.dump())
            pipe.ltrim(key, 0, self.per_user - 1)
            pipe.expire(key, int(self.window_s) + 1)
            await pipe.execute()

    async def put_request(self, summary: RequestSummary) -> None:
        await self._redis.set(
            self._request_key(summary.id), summary.dump(), ex=self.settings.request_ttl_s
        )

    async def get_request(self, request_id: str) -> RequestSummary | None:
        raw = await self._redis.get(self._request_key(request_id))
        return RequestSummary.load(raw) if raw else None

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def open_state(settings: StateSettings, per_user: int, window_s: float) -> State:
    if settings.backend == "redis":
        return RedisState(settings, per_user, window_s)
    return MemoryState(settings, per_user, window_s)
