"""Only callers with a token reach cascade.v1, within their rate, once per known request —
on both transports. (The ext_proc service on the same port is Envoy's: docs/security.md.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from extproc._pb.cascade.v1 import cascade_pb2, cascade_pb2_grpc
from extproc.app.run import TRANSPORTS, CascadeServer, ServeOptions
from extproc.config.snapshot import DEFAULT_CONFIG
from extproc.services.api import FEEDBACK_BURST
from tests.conftest import API_AUTH, API_TOKEN, chat_body, write_api_tokens
from tests.protocol.streams import request_body, request_headers

CLASSIFY = cascade_pb2.ClassifyRequest(messages=[cascade_pb2.Message(role="user", content="hi")])


@pytest.fixture(params=TRANSPORTS)
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CascadeServer]:
    tokens = None if request.node.get_closest_marker("no_tokens") else write_api_tokens(tmp_path)
    instance = CascadeServer(
        ServeOptions(
            config=DEFAULT_CONFIG,
            listen="127.0.0.1:0",
            drain_delay=0.0,
            grace=1.0,
            transport=request.param,
            api_tokens=tokens,
        )
    )
    await instance.start()
    yield instance
    await instance.shutdown()


def refused(server: CascadeServer, method: str, reason: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "cascade_api_refused_total", {"method": method, "reason": reason}
    )
    return value or 0.0


async def routed(port: int, request_id: str) -> None:
    """One classified request through the ext_proc service, as Envoy would send it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ext_grpc.ExternalProcessorStub(channel).Process()
        for message in (
            request_headers(extra={"x-request-id": request_id}),
            request_body(chat_body("hello")),
        ):
            await call.write(message)
            await asyncio.wait_for(call.read(), 5)
        await call.done_writing()


async def test_without_or_with_a_wrong_token_nothing_is_answered(server: CascadeServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cascade_pb2_grpc.CascadeStub(channel)
        for metadata in ((), (("authorization", f"Bearer {API_TOKEN}x"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Classify(CLASSIFY, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert API_TOKEN not in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitFeedback(cascade_pb2.SubmitFeedbackRequest(request_id="r", score=-1))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await stub.Classify(CLASSIFY, metadata=API_AUTH)
        assert answer.decision.tier == "weak"
    assert refused(server, "Classify", "unauthenticated") == 2
    assert refused(server, "SubmitFeedback", "unauthenticated") == 1


@pytest.mark.no_tokens
async def test_without_a_token_file_the_api_is_off(server: CascadeServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cascade_pb2_grpc.CascadeStub(channel).Classify(CLASSIFY, metadata=API_AUTH)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "--api-tokens" in (info.value.details() or "")
    assert refused(server, "Classify", "disabled") == 1


async def test_forged_feedback_flood_is_cut_and_counts_once(server: CascadeServer) -> None:
    """300 thumbs-down for one real request: one is counted, the rest are refused."""
    await routed(server.port, "real-1")
    await server.recorder.drain()
    codes: list[grpc.StatusCode] = []
    known = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cascade_pb2_grpc.CascadeStub(channel)
        for n in range(300):  # bounded
            request_id = "real-1" if n % 2 == 0 else f"forged-{n}"
            request = cascade_pb2.SubmitFeedbackRequest(request_id=request_id, score=-1)
            try:
                answer = await stub.SubmitFeedback(request, metadata=API_AUTH, timeout=5)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
                continue
            known += answer.known
    accepted = server.metrics.registry.get_sample_value("cascade_feedback_total", {"score": "-1"})
    assert known == 1 and accepted == 1  # the real request, once; forged ids are unknown
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 300 - FEEDBACK_BURST - 5
    assert grpc.StatusCode.ALREADY_EXISTS in codes
    assert refused(server, "SubmitFeedback", "rate_limited") == codes.count(
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


async def test_only_cache_admins_may_invalidate_the_cache(server: CascadeServer) -> None:
    """The test caller has a valid token but is not in `cache.admin_callers` (none configured)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cascade_pb2_grpc.CascadeStub(channel)
        request = cascade_pb2.InvalidateCacheRequest()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvalidateCache(request, metadata=API_AUTH)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvalidateCache(request)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused(server, "InvalidateCache", "forbidden") == 1
