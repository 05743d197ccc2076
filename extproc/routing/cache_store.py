"""The response cache's memory: a bounded LRU of answers and a per-bucket near-duplicate index.

One `CacheStore` lives for the process (it survives config reloads; the settings it enforces are
passed in with each call). Entries expire after their TTL and the least recently used go first
beyond `max_entries`. The semantic index keeps, per bucket (same prefix, same facts), at most
`max_per_bucket` texts' 3-gram sets and LSH bands; an entry evicted from the LRU leaves its bucket.

Counters are plain integers (`extproc.app.cache_metrics` exposes them); `listeners` hear every
locally stored entry (Redis replication, `extproc.app.cache_sync`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from extproc.core.cached_answer import Answer
from extproc.core.similarity import Shingled, cosine

#: candidates (most shared LSH bands first) compared exactly per semantic lookup
MAX_CANDIDATES = 16
#: upper bounds (seconds) of the lookup-latency histogram's buckets
LATENCY_BOUNDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3)


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    key: str
    answer: Answer
    #: the tier that wrote the answer
    tier: str
    created: float
    expires: float
    bucket: str | None = None
    shingled: Shingled | None = None
    #: the config epoch/classifier partition the entry belongs to (for invalidation)
    partition: str = ""


@dataclass(slots=True)
class _Bucket:
    texts: OrderedDict[str, Shingled] = field(default_factory=OrderedDict)
    bands: dict[bytes, set[str]] = field(default_factory=dict)

    def add(self, key: str, shingled: Shingled, limit: int) -> None:
        if key in self.texts:
            self.remove(key)
        self.texts[key] = shingled
        for band in shingled.bands:
            self.bands.setdefault(band, set()).add(key)
        while len(self.texts) > limit:
            self.remove(next(iter(self.texts)))

    def remove(self, key: str) -> None:
        shingled = self.texts.pop(key, None)
        if shingled is None:
            return
        for band in shingled.bands:
            keys = self.bands.get(band)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.bands[band]


class CacheStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._buckets: dict[str, _Bucket] = {}
        self.listeners: list[Callable[[Entry], None]] = []
        #: hear every local `clear` (Redis replication tells the other replicas)
        self.clear_listeners: list[Callable[[], None]] = []
        #: counters by name (`lookup_<result>`, `store_<result>`, `evicted`, `expired`, ...)
        self.counts: dict[str, int] = {}
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        #: tokens (prompt, completion) of the answers served from the cache, by the tier that
        #: wrote them (the metrics price them: `cascade_cache_saved_usd_total`)
        self.saved_tokens: dict[str, list[int]] = {}

    def count(self, name: str, amount: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + amount

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        for index, bound in enumerate(LATENCY_BOUNDS):
            if seconds <= bound:
                self.latency[index] += 1
                return
        self.latency[-1] += 1

    def __len__(self) -> int:
        return len(self._entries)

    def exact(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._drop(key)
            self.count("expired")
            return None
        self._entries.move_to_end(key)
        return entry

    def similar(
        self, bucket: str, shingled: Shingled, threshold: float
    ) -> tuple[Entry, float] | None:
        """The most similar stored text of the bucket at or above `threshold`."""
        index = self._buckets.get(bucket)
        if index is None:
            return None
        votes: dict[str, int] = {}
        for band in shingled.bands:
            for key in index.bands.get(band, ()):
                votes[key] = votes.get(key, 0) + 1
        # cosine >= t needs t^2 <= |A| / |B| <= 1 / t^2: other lengths cannot match
        size = shingled.grams.size
        low, high = size * threshold * threshold, size / (threshold * threshold)
        ranked = sorted(votes, key=votes.__getitem__, reverse=True)
        best: tuple[str, float] | None = None
        checked = 0
        for key in ranked:
            grams = index.texts[key].grams
            if not low <= grams.size <= high:
                continue
            score = cosine(shingled.grams, grams)
            if score >= threshold and (best is None or score > best[1]):
                best = (key, score)
            checked += 1
            if checked >= MAX_CANDIDATES:
                break
        if best is None:
            return None
        entry = self.exact(best[0])
        return (entry, best[1]) if entry is not None else None

    def put(self, entry: Entry, *, max_entries: int, max_per_bucket: int, local: bool) -> None:
        """Store (or replace) an entry; `local`: written here (listeners hear it)."""
        if entry.key in self._entries:
            self._drop(entry.key)
        self._entries[entry.key] = entry
        if entry.bucket is not None and entry.shingled is not None:
            self._buckets.setdefault(entry.bucket, _Bucket()).add(
                entry.key, entry.shingled, max_per_bucket
            )
        while len(self._entries) > max_entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.count("evicted")
        if local:
            for listener in self.listeners:
                listener(entry)

    def clear(self, *, local: bool) -> int:
        """Forget everything (the admin call, or another replica's); returns how many went."""
        dropped = len(self._entries)
        self._entries.clear()
        self._buckets.clear()
        self.count("invalidated", dropped)
        if local:
            for listener in self.clear_listeners:
                listener()
        return dropped

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None or entry.bucket is None:
            return
        index = self._buckets.get(entry.bucket)
        if index is not None:
            index.remove(key)
            if not index.texts:
                del self._buckets[entry.bucket]
