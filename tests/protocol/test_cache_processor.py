"""The processor with the response cache, message by message as Envoy sends them: what is
stored, what hits, what never does, and that a miss is answered exactly as without a cache."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.snapshot import Snapshot, compile_config
from extproc.routing import cache as cache_module
from extproc.routing.cache_store import CacheStore
from extproc.routing.processor import RequestProcessor
from tests.conftest import chat_body
from tests.protocol.streams import request_body, request_headers, set_headers
from tests.protocol.test_recorder import CONFIG, response_chunk

USER = {"x-user-id": "alice"}


def snapshot(cache: str = "{}") -> Snapshot:
    return compile_config(CONFIG + f"cache: {cache}\n")


def answer(content: str = "Paris.", finish: str = "stop") -> bytes:
    return orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "small",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
    )


def ask(
    snap: Snapshot,
    store: CacheStore | None,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[RequestProcessor, pb.ProcessingResponse]:
    processor = RequestProcessor(snap, cache=store)
    processor.handle(request_headers(extra=USER if headers is None else headers))
    reply = processor.handle(request_body(body))
    processor.after_answer()
    return processor, reply


def respond(
    processor: RequestProcessor, chunks: list[bytes], status: int = 200, end: bool = True
) -> None:
    for index, chunk in enumerate(chunks):
        last = end and index == len(chunks) - 1
        processor.handle(
            response_chunk(chunk, end=last, status=status if index == 0 else 0, tier="weak")
        )
        processor.after_answer()
    processor.close()


def round_trip(snap: Snapshot, store: CacheStore, body: bytes, reply: bytes) -> str:
    processor, routed = ask(snap, store, body)
    respond(processor, [reply[:10], reply[10:]])
    return set_headers(routed).get("x-cascade-cache", "")


def test_a_stored_answer_is_replayed_as_json_and_as_sse() -> None:
    snap, store = snapshot(), CacheStore()
    body = chat_body("What is the capital of France?", temperature=0)
    assert round_trip(snap, store, body, answer()) == "miss"
    processor, hit = ask(snap, store, body)
    assert hit.WhichOneof("response") == "immediate_response"
    assert processor.done
    assert hit.immediate_response.body == answer()
    replay_headers = {
        h.header.key: h.header.raw_value for h in hit.immediate_response.headers.set_headers
    }
    assert replay_headers["x-cascade-cache"] == b"hit"
    assert replay_headers["x-cascade-served-tier"] == b"weak"
    streamed = chat_body("What is the capital of France?", temperature=0, stream=True)
    _, sse = ask(snap, store, streamed)
    assert sse.immediate_response.body.endswith(b"data: [DONE]\n\n")
    assert b'"content":"Paris."' in sse.immediate_response.body


def test_a_miss_is_answered_exactly_as_without_the_cache() -> None:
    body = chat_body("please refactor this module", temperature=0)
    _, without = ask(snapshot(), None, body)
    _, with_cache = ask(snapshot(), CacheStore(), body)
    assert set_headers(with_cache).pop("x-cascade-cache") == "miss"
    plain = set_headers(without)
    cached = set_headers(with_cache)
    cached.pop("x-cascade-cache")
    assert cached == plain
    assert (
        with_cache.request_body.response.body_mutation
        == without.request_body.response.body_mutation
    )


@pytest.mark.parametrize(
    ("extra", "headers", "status"),
    [
        ({"temperature": 1.5}, USER, "skip"),
        ({"n": 2, "temperature": 0}, USER, "skip"),
        ({"temperature": 0}, {}, "skip"),  # no identity under scope: tenant
        ({"temperature": 0}, {**USER, "cache-control": "no-store"}, "bypass"),
    ],
)
def test_what_is_never_cached(extra: dict[str, Any], headers: dict[str, str], status: str) -> None:
    snap, store = snapshot(), CacheStore()
    body = chat_body("What is the capital of France?", **extra)
    for _ in range(2):
        processor, routed = ask(snap, store, body, headers)
        assert set_headers(routed)["x-cascade-cache"] == status
        respond(processor, [answer()])
    assert len(store) == 0


def test_no_cache_skips_the_lookup_but_stores() -> None:
    snap, store = snapshot(), CacheStore()
    body = chat_body("Capital of Peru?", temperature=0)
    round_trip(snap, store, body, answer("Lima."))
    processor, routed = ask(snap, store, body, {**USER, "cache-control": "no-cache"})
    assert set_headers(routed)["x-cascade-cache"] == "bypass"
    respond(processor, [answer("Lima, Peru.")])
    _, hit = ask(snap, store, body)
    assert b"Lima, Peru." in hit.immediate_response.body


def test_global_scope_caches_without_identity() -> None:
    snap, store = snapshot("{scope: global}"), CacheStore()
    body = chat_body("Capital of Chile?", temperature=0)
    processor, _ = ask(snap, store, body, {})
    respond(processor, [answer("Santiago.")])
    _, hit = ask(snap, store, body, {})
    assert hit.WhichOneof("response") == "immediate_response"


@pytest.mark.parametrize(
    ("reply", "status", "end", "reason"),
    [
        (answer(), 500, True, "status"),
        (answer(), 200, False, "incomplete"),  # the stream was cut
        (answer(finish="length"), 200, True, "finish_reason"),
        (answer("x" * 2000), 200, True, "too_large"),
        (b"<html>oops</html>", 200, True, "malformed"),
    ],
)
def test_what_is_not_stored(reply: bytes, status: int, end: bool, reason: str) -> None:
    snap, store = snapshot("{max_entry_bytes: 1024}"), CacheStore()
    processor, _ = ask(snap, store, chat_body("Capital of Spain?", temperature=0))
    respond(processor, [reply], status=status, end=end)
    assert len(store) == 0
    assert store.counts[f"store_{reason}"] == 1


def test_audit_mode_sends_would_be_hits_upstream_and_compares() -> None:
    snap, store = snapshot("{audit_share: 1.0}"), CacheStore()
    body = chat_body("Capital of Italy?", temperature=0)
    round_trip(snap, store, body, answer("Rome."))
    processor, routed = ask(snap, store, body)
    assert set_headers(routed)["x-cascade-cache"] == "audit"  # sent to the backend anyway
    respond(processor, [answer("Rome.")])
    processor, _ = ask(snap, store, body)
    respond(processor, [answer("Milan is the capital of fashion, not of the country.")])
    assert store.counts["audit_exact_agree"] == 1
    assert store.counts["audit_exact_differ"] == 1


def test_a_failing_lookup_is_a_counted_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("extproc.routing.cache.lookup", broken)
    store = CacheStore()
    _, routed = ask(snapshot(), store, chat_body("hello", temperature=0))
    assert set_headers(routed)["x-cascade-tier"] == "weak"
    assert set_headers(routed)["x-cascade-cache"] == "error"
    assert store.counts["lookup_error"] == 1


def test_a_client_sent_verdict_is_replaced() -> None:
    _, routed = ask(
        snapshot(), CacheStore(), chat_body("hi", temperature=0), {**USER, "x-cascade-cache": "hit"}
    )
    assert set_headers(routed)["x-cascade-cache"] == "miss"
    assert "x-cascade-cache" not in routed.request_body.response.header_mutation.remove_headers


def test_the_cache_is_off_without_a_section() -> None:
    store = CacheStore()
    _, routed = ask(compile_config(CONFIG), store, chat_body("hi", temperature=0))
    assert "x-cascade-cache" not in set_headers(routed)
    assert cache_module.HEADER == "x-cascade-cache"
