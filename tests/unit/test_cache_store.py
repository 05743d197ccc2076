"""The cache's memory: TTL, LRU bound, buckets bounded and cleaned on eviction."""

from __future__ import annotations

from extproc.core.cached_answer import Answer
from extproc.core.similarity import shingle
from extproc.routing.cache_store import CacheStore, Entry

ANSWER = Answer(b"{}", "ok", "m", "stop", 1, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(key: str, clock: Clock, ttl: float = 60, text: str = "", bucket: str = "b") -> Entry:
    return Entry(
        key=key,
        answer=ANSWER,
        tier="weak",
        created=clock.now,
        expires=clock.now + ttl,
        bucket=bucket if text else None,
        shingled=shingle(text) if text else None,
    )


def test_entries_expire() -> None:
    clock = Clock()
    store = CacheStore(clock)
    store.put(entry("a", clock, ttl=10), max_entries=10, max_per_bucket=10, local=True)
    assert store.exact("a") is not None
    clock.now += 11
    assert store.exact("a") is None
    assert store.counts["expired"] == 1
    assert len(store) == 0


def test_the_least_recently_used_goes_first() -> None:
    clock = Clock()
    store = CacheStore(clock)
    for key in "abc":
        store.put(entry(key, clock), max_entries=3, max_per_bucket=10, local=True)
    assert store.exact("a") is not None  # a is now the most recent
    store.put(entry("d", clock), max_entries=3, max_per_bucket=10, local=True)
    assert store.exact("b") is None
    assert store.exact("a") is not None
    assert store.counts["evicted"] == 1


def test_similar_finds_the_best_match_above_the_threshold_only() -> None:
    clock = Clock()
    store = CacheStore(clock)
    text = "A farmer has 17 sheep and buys 5 more. How many sheep now?"
    store.put(entry("a", clock, text=text), max_entries=10, max_per_bucket=10, local=True)
    store.put(
        entry("b", clock, text="Tell me a story about a dragon and a knight."),
        max_entries=10,
        max_per_bucket=10,
        local=True,
    )
    found = store.similar("b", shingle(text + " "), 0.9)
    assert found is not None and found[0].key == "a"
    assert store.similar("b", shingle("Completely unrelated words here."), 0.9) is None
    assert store.similar("other-bucket", shingle(text), 0.9) is None


def test_an_evicted_entry_leaves_its_bucket_and_buckets_are_bounded() -> None:
    clock = Clock()
    store = CacheStore(clock)
    text = "How do I reverse a list in Python quickly?"
    store.put(entry("a", clock, text=text), max_entries=1, max_per_bucket=10, local=True)
    store.put(
        entry("b", clock, text="Another question", bucket="c"),
        max_entries=1,
        max_per_bucket=10,
        local=True,
    )
    assert store.similar("b", shingle(text), 0.9) is None
    for index in range(5):
        store.put(
            entry(f"k{index}", clock, text=f"{text} {index}"),
            max_entries=100,
            max_per_bucket=2,
            local=True,
        )
    assert len(store._buckets["b"].texts) == 2


def test_listeners_hear_local_stores_and_clears_only() -> None:
    clock = Clock()
    store = CacheStore(clock)
    heard: list[str] = []
    store.listeners.append(lambda e: heard.append(e.key))
    store.clear_listeners.append(lambda: heard.append("clear"))
    store.put(entry("a", clock), max_entries=10, max_per_bucket=10, local=True)
    store.put(entry("b", clock), max_entries=10, max_per_bucket=10, local=False)
    assert store.clear(local=True) == 2
    store.clear(local=False)
    assert heard == ["a", "clear"]
