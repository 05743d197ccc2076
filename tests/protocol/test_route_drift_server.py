"""Both transports decide with the snapshot Envoy can route, given `x-cascade-routes` metadata,
and report the mismatch on the `cascade.routes` health service (real gRPC on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.app.run import ROUTES_SERVICE, TRANSPORTS, CascadeServer, ServeOptions
from extproc.config.drift import routes_fingerprint
from extproc.config.snapshot import DEFAULT_CONFIG
from extproc.core import headers
from tests.conftest import chat_body
from tests.protocol.streams import request_body, request_headers, set_headers


@pytest.fixture(params=TRANSPORTS)
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CascadeServer]:
    config = tmp_path / "cascade.yaml"
    config.write_bytes(DEFAULT_CONFIG.read_bytes())
    instance = CascadeServer(
        ServeOptions(
            config=config,
            listen="127.0.0.1:0",
            drain_delay=0.0,
            grace=1.0,
            reload_interval=0.05,
            transport=str(request.param),
        )
    )
    await instance.start()
    yield instance
    await instance.shutdown()


async def decide(channel: grpc.aio.Channel, text: str, routes: str) -> str:
    stub = pb_grpc.ExternalProcessorStub(channel)
    metadata = ((headers.ROUTES_METADATA, routes),) if routes else None
    call = stub.Process(metadata=metadata)
    await call.write(request_headers())
    await asyncio.wait_for(call.read(), 5)
    await call.write(request_body(chat_body(text)))
    answer = await asyncio.wait_for(call.read(), 5)
    await call.done_writing()
    return set_headers(answer)["x-cascade-tier"]


async def routes_health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=ROUTES_SERVICE), timeout=5)
    return int(reply.status)


async def test_reload_with_a_new_tier_keeps_deciding_what_envoy_routes(
    server: CascadeServer,
) -> None:
    envoy = routes_fingerprint(server.store.current)
    serving = health_pb2.HealthCheckResponse
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await decide(channel, "please refactor this", envoy) == "strong"
        assert await routes_health(channel) == serving.SERVING
    document = yaml.safe_load(DEFAULT_CONFIG.read_text())
    document["tiers"].insert(1, {"name": "mid", "model": "m"})
    document["classifiers"]["v7"]["rules"][0]["tier"] = "mid"
    server.store.path.write_text(yaml.safe_dump(document, allow_unicode=True))
    for _ in range(200):
        if "mid" in server.store.current.tier_names:
            break
        await asyncio.sleep(0.05)
    assert "mid" in server.store.current.tier_names
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await routes_health(channel) == serving.NOT_SERVING  # judged at the reload
        assert await decide(channel, "please refactor this", envoy) == "strong"
        assert await decide(channel, "please refactor this", "") == "mid"  # no fingerprint
        new = routes_fingerprint(server.store.current)
        assert await decide(channel, "please refactor this", new) == "mid"
        assert await routes_health(channel) == serving.SERVING
        assert await routes_health(channel) == serving.SERVING
    assert server.routes.mismatches == {"kept": 1, "restricted": 0, "unknown": 0}
