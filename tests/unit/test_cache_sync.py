"""Replicated cache events: an entry survives the trip; malformed, expired and echoed events
are skipped and counted."""

from __future__ import annotations

import orjson

from extproc.app.cache_sync import CacheSync, decode, encode
from extproc.config.snapshot import compile_config
from extproc.core.cached_answer import Answer
from extproc.core.similarity import shingle
from extproc.routing.cache_store import CacheStore, Entry
from tests.protocol.test_recorder import CONFIG

SNAPSHOT = compile_config(CONFIG + "cache: {semantic: {enabled: true}}\n")


def entry(expires: float = 4e9) -> Entry:
    return Entry(
        key="k",
        answer=Answer(b'{"id":"x"}', "hello", "m", "stop", 3, 4, b"[]", "x", 9),
        tier="weak",
        created=1.0,
        expires=expires,
        bucket="b",
        shingled=shingle("How many sheep are there?"),
        partition="0/v7/p",
    )


def test_an_entry_survives_encoding() -> None:
    original = entry()
    again = decode(encode(original))
    assert again is not None
    assert again.answer == original.answer
    assert (again.key, again.tier, again.bucket, again.partition) == ("k", "weak", "b", "0/v7/p")
    assert again.shingled is not None and original.shingled is not None
    assert again.shingled.bands == original.shingled.bands


def test_bad_events_are_skipped_and_counted() -> None:
    store = CacheStore()
    sync = CacheSync(store, lambda: SNAPSHOT)
    good = encode(entry())
    bad = orjson.loads(good)
    bad["grams"] = "%%%"
    for data in (b"{", orjson.dumps({"v": 99}), orjson.dumps(bad), b""):
        sync.apply({b"origin": b"other", b"kind": b"entry", b"data": data})
    assert store.counts["replicated_malformed"] == 4
    sync.apply({b"origin": b"other", b"kind": b"entry", b"data": encode(entry(expires=2.0))})
    assert store.counts["replicated_expired"] == 1
    sync.apply({b"origin": sync.origin.encode(), b"kind": b"entry", b"data": good})
    assert len(store) == 0  # our own event, echoed back
    sync.apply({b"origin": b"other", b"kind": b"entry", b"data": good})
    assert store.exact("k") is not None
    sync.apply({b"origin": b"other", b"kind": b"clear"})
    assert len(store) == 0


def test_local_events_are_queued_and_a_full_queue_drops() -> None:
    store = CacheStore()
    CacheSync(store, lambda: SNAPSHOT)
    for index in range(1005):
        store.put(
            Entry(f"k{index}", entry().answer, "weak", 1.0, 4e9),
            max_entries=10,
            max_per_bucket=10,
            local=True,
        )
    assert store.counts["replicated_dropped"] == 5
