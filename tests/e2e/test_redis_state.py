"""The Redis state backend against a real `redis-server` (Debian package) on loopback.

Each test module starts its own server on a free port, without persistence. Skipped only when
the binary is absent (`make test` installs it: SYSTEM_PACKAGES in the Makefile).
"""

from __future__ import annotations

import time
from pathlib import Path

from extproc.config.snapshot import StateSettings, compile_config
from extproc.routing.processor import RequestProcessor
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.misroute import RecentRequest, RedisState, RequestSummary
from extproc.telemetry.recorder import Recorder
from extproc.telemetry.tracing import Tracing
from tests.conftest import chat_body
from tests.e2e.conftest import free_port
from tests.protocol.streams import request_body, request_headers
from tests.protocol.test_recorder import CONFIG, response_chunk


def settings(url: str, prefix: str) -> StateSettings:
    return StateSettings(backend="redis", url=url, key_prefix=prefix, request_ttl_s=60)


async def test_recent_requests_are_capped_and_windowed(redis_url: str) -> None:
    state = RedisState(settings(redis_url, "t1:"), per_user=3, window_s=60)
    assert await state.ping()
    now = time.time()
    for i in range(5):
        await state.remember("u", RecentRequest(now - 10 + i, f"r{i}", "weak", "v7", 200, (i, 9)))
    await state.remember("u", RecentRequest(now - 120, "old", "weak", "v7", 200, (1,)))
    recent = await state.recent("u")
    assert [e.request_id for e in recent] == ["r4", "r3"]  # newest first; "old" aged out
    assert recent[0].sketch == (4, 9)
    assert await state.recent("nobody") == []
    ttl = await state._redis.ttl("t1:user:u")
    assert 0 < ttl <= 61
    await state.close()


async def test_request_summaries_expire(redis_url: str) -> None:
    state = RedisState(settings(redis_url, "t2:"), per_user=3, window_s=60)
    item = RequestSummary(
        "id-1", time.time(), "h", "weak", "weak", "v7", "default", 10, 1, 200, 5, 6, 0.1
    )
    await state.put_request(item)
    assert await state.get_request("id-1") == item
    assert await state.get_request("id-2") is None
    assert 0 < await state._redis.ttl("t2:req:id-1") <= 60
    await state.close()


async def test_two_replicas_share_the_retry_pattern(redis_url: str, tmp_path: Path) -> None:
    """The first request is answered through replica A, the retry through replica B."""
    text = (
        CONFIG + f'telemetry:\n  state: {{backend: redis, url: "{redis_url}", key_prefix: "t3:"}}\n'
    )
    snapshot = compile_config(text, "t.yaml")

    def replica() -> tuple[Recorder, Metrics]:
        metrics = Metrics()
        recorder = Recorder.from_settings(lambda: snapshot, metrics, Tracing(None))
        recorder.start()
        return recorder, metrics

    a, _ = replica()
    b, metrics_b = replica()

    def ask(recorder: Recorder, text: str, request_id: str) -> None:
        processor = RequestProcessor(snapshot, recorder)
        for message in (
            request_headers(extra={"x-user-id": "carol", "x-request-id": request_id}),
            request_body(chat_body(text)),
            response_chunk(b"{}", status=200, tier="weak", end=True),
        ):
            processor.handle(message)

    ask(a, "explain python decorators", "first")
    await a.drain()
    ask(b, "Explain Python decorators?", "second")
    await b.drain()
    value = metrics_b.registry.get_sample_value(
        "cascade_misroute_suspected_total",
        {"kind": "false_negative", "signal": "retry", "classifier": "v7"},
    )
    assert value == 1
    result = await a.feedback("second", -1, "")
    assert (result.known, result.suspicion) == (True, "false_negative")
    await a.stop()
    await b.stop()


async def test_unreachable_redis_never_blocks_and_is_counted() -> None:
    text = CONFIG + (
        f'telemetry:\n  state: {{backend: redis, url: "redis://127.0.0.1:{free_port()}/0",'
        " timeout_ms: 100}\n"
    )
    snapshot = compile_config(text, "t.yaml")
    metrics = Metrics()
    recorder = Recorder.from_settings(lambda: snapshot, metrics, Tracing(None))
    recorder.start()
    processor = RequestProcessor(snapshot, recorder)
    started = time.perf_counter()
    for message in (
        request_headers(extra={"x-user-id": "dave"}),
        request_body(chat_body("hello")),
        response_chunk(b"{}", status=200, tier="weak", end=True),
    ):
        processor.handle(message)
    assert time.perf_counter() - started < 0.05  # the answers did not wait for Redis
    await recorder.drain()
    errors = metrics.registry.get_sample_value(
        "cascade_state_errors_total", {"operation": "recent"}
    )
    assert errors == 1
    await recorder.stop()
