"""The servicer behind a real grpc.aio server on port 0, driven by a real gRPC client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.app.run import TRANSPORTS, CascadeServer, ServeOptions
from extproc.config.snapshot import DEFAULT_CONFIG
from tests.conftest import chat_body
from tests.protocol.streams import request_body, request_headers, set_headers


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every test here runs against both gRPC transports."""
    return str(request.param)


@pytest.fixture
async def server(tmp_path: Path, transport: str) -> AsyncIterator[CascadeServer]:
    config = tmp_path / "cascade.yaml"
    config.write_bytes(DEFAULT_CONFIG.read_bytes())
    instance = CascadeServer(
        ServeOptions(
            config=config,
            listen="127.0.0.1:0",
            drain_delay=0.0,
            grace=1.0,
            reload_interval=0.05,
            transport=transport,
        )
    )
    await instance.start()
    yield instance
    await instance.shutdown()


@pytest.fixture
async def channel(server: CascadeServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


async def exchange(
    channel: grpc.aio.Channel, *messages: pb.ProcessingRequest
) -> list[pb.ProcessingResponse]:
    stub = pb_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    answers = []
    for message in messages:
        await call.write(message)
        answer = await asyncio.wait_for(call.read(), 5)
        if answer is grpc.aio.EOF:
            break
        answers.append(answer)
    await call.done_writing()
    return answers


async def test_chat_body_over_grpc(channel: grpc.aio.Channel) -> None:
    answers = await exchange(channel, request_headers(), request_body(chat_body("아키텍처 리뷰")))
    assert set_headers(answers[1])["x-cascade-tier"] == "strong"


async def test_header_only_get(channel: grpc.aio.Channel) -> None:
    answers = await exchange(channel, request_headers(method="GET", end_of_stream=True))
    assert set_headers(answers[0])["x-cascade-reason"] == "no_body"


async def test_invalid_json_then_stream_ends(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    await call.write(request_headers())
    await call.read()
    await call.write(request_body(b"{broken"))
    answer = await asyncio.wait_for(call.read(), 5)
    assert answer.immediate_response.status.code == 400
    assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_oversized_body_is_classified_as_unparsed(tmp_path: Path, transport: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        DEFAULT_CONFIG.read_text().replace("max_body_bytes: 8388608", "max_body_bytes: 1048576")
    )
    instance = CascadeServer(
        ServeOptions(
            config=config, listen="127.0.0.1:0", drain_delay=0, grace=1, transport=transport
        )
    )
    await instance.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{instance.port}") as chan:
            big = chat_body("y" * (6 * 1024 * 1024))  # larger than gRPC's 4 MB default, too
            answers = await exchange(chan, request_headers(), request_body(big))
        assert set_headers(answers[1])["x-cascade-reason"] == "unparsed"
    finally:
        await instance.shutdown()


async def test_client_cancel_releases_stream(
    server: CascadeServer, channel: grpc.aio.Channel
) -> None:
    stub = pb_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    await call.write(request_headers())
    await call.read()
    assert server.servicer.in_flight == 1
    call.cancel()
    for _ in range(100):
        if server.servicer.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert server.servicer.in_flight == 0
    # the server still answers new streams
    answers = await exchange(channel, request_headers(), request_body(chat_body("hi")))
    assert set_headers(answers[1])["x-cascade-tier"] == "weak"


async def test_response_phase_messages(channel: grpc.aio.Channel) -> None:
    answers = await exchange(
        channel,
        request_headers(),
        request_body(chat_body("hi")),
        pb.ProcessingRequest(response_headers=pb.HttpHeaders()),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x", end_of_stream=True)),
    )
    assert [a.WhichOneof("response") for a in answers] == [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ]


async def test_reload_mid_stream_keeps_stream_snapshot(
    server: CascadeServer, channel: grpc.aio.Channel
) -> None:
    stub = pb_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    await call.write(request_headers())
    await call.read()
    # the file changes while this request waits for its body: the stream keeps its snapshot
    path = server.options.config
    tmp = path.with_suffix(".new")
    tmp.write_text(
        path.read_text().replace("classifier: v7", "classifier: v9").replace("  v7:", "  v9:")
    )
    os.replace(tmp, path)
    for _ in range(200):
        if server.store.current.stable == "v9":
            break
        await asyncio.sleep(0.01)
    assert server.store.current.stable == "v9"
    await call.write(request_body(chat_body("hi")))
    answer = await call.read()
    assert set_headers(answer)["x-cascade-classifier"] == "v7"
    await call.done_writing()
    fresh = await exchange(channel, request_headers(), request_body(chat_body("hi")))
    assert set_headers(fresh[1])["x-cascade-classifier"] == "v9"


async def test_health_serving_then_not_serving(tmp_path: Path, transport: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(DEFAULT_CONFIG.read_bytes())
    instance = CascadeServer(
        ServeOptions(
            config=config, listen="127.0.0.1:0", drain_delay=0.3, grace=1, transport=transport
        )
    )
    await instance.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{instance.port}") as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(instance.shutdown())
        # NOT_SERVING from the start of the drain delay (0.3 s), before the listener closes
        status = health_pb2.HealthCheckResponse.SERVING
        for _ in range(200):  # bounded: the drain delay ends well before
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            status = reply.status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING or stopping.done():
                break
            await asyncio.sleep(0.005)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


def test_sigterm_drains_open_stream_and_exits_zero(tmp_path: Path, transport: str) -> None:
    """SIGTERM → NOT_SERVING → an open stream still completes → exit 0."""
    cascade = Path(sys.executable).with_name("cascade")
    port_file = tmp_path / "port"
    with (tmp_path / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(
            [
                str(cascade),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--drain-delay",
                "0.5",
                "--grace",
                "5",
                "--metrics-listen",
                "127.0.0.1:0",
                "--transport",
                transport,
            ],
            stderr=stderr,
            env={**os.environ, "CASCADE_PORT_FILE": str(port_file)},
        )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            stub = pb_grpc.ExternalProcessorStub(chan)
            queue: list[pb.ProcessingRequest] = [request_headers()]
            gate = __import__("threading").Event()

            def messages() -> object:
                yield queue[0]
                gate.wait(10)
                yield request_body(chat_body("debug"))

            responses = stub.Process(messages())
            first = next(responses)
            assert first.WhichOneof("response") == "request_headers"
            proc.send_signal(signal.SIGTERM)
            check = health_pb2_grpc.HealthStub(chan).Check
            deadline = time.monotonic() + 5  # the drain delay (0.5 s) keeps the port open
            status = check(health_pb2.HealthCheckRequest()).status
            while status != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "never NOT_SERVING after SIGTERM"
                status = check(health_pb2.HealthCheckRequest()).status
            gate.set()
            second = next(responses)
            assert set_headers(second)["x-cascade-tier"] == "strong"
        assert proc.wait(timeout=15) == 0
        log = (tmp_path / "stderr").read_text()
        assert "received SIGTERM" in log
        assert "stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
