"""`--tls-client-ca`: the classifier requires a client certificate its CA signed, on both
transports; a caller without one (or with another CA's) gets no gRPC answer at all."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.app.run import TRANSPORTS, CascadeServer, ServeOptions
from extproc.config.snapshot import DEFAULT_CONFIG
from tests.k8s.test_mtls import SAN, make_pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pki")
    paths = make_pki(base / "ours")
    other = make_pki(base / "other")
    paths["other.crt"], paths["other.key"] = other["envoy.crt"], other["envoy.key"]
    return paths


@pytest.fixture(params=TRANSPORTS)
async def server(request: pytest.FixtureRequest, pki: dict[str, Path]) -> AsyncIterator[int]:
    instance = CascadeServer(
        ServeOptions(
            config=DEFAULT_CONFIG,
            listen="127.0.0.1:0",
            drain_delay=0.0,
            grace=1.0,
            transport=request.param,
            tls_cert=pki["classifier.crt"],
            tls_key=pki["classifier.key"],
            tls_client_ca=pki["ca"],
        )
    )
    await instance.start()
    yield instance.port
    await instance.shutdown()


async def check(port: int, pki: dict[str, Path], client: str | None) -> int:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki[f"{client}.key"].read_bytes() if client else None,
        certificate_chain=pki[f"{client}.crt"].read_bytes() if client else None,
    )
    options = (("grpc.ssl_target_name_override", SAN),)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


async def test_envoys_certificate_is_accepted(server: int, pki: dict[str, Path]) -> None:
    assert await check(server, pki, "envoy") == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("client", [None, "other"])
async def test_no_or_a_foreign_certificate_is_refused(
    server: int, pki: dict[str, Path], client: str | None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(server, pki, client)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
