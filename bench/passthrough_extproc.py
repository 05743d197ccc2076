"""Minimal ext_proc servers: the baselines `cascade serve` is compared against.

They answer request headers with nothing and the buffered body with a fixed tier header plus
`clear_route_cache`, doing no parsing or classification at all. Two transports:

- `grpcio`: a grpc.aio servicer (the baseline the targets in bench/README.md are set against);
- `h2`: the same answers on cascade's lean HTTP/2 transport (`extproc.transport.h2`), which shows
  what the classification logic costs on that transport.

    python bench/passthrough_extproc.py PORT [--transport grpcio|h2]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.transport.h2.server import H2Server

HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
BODY = pb.ProcessingResponse(
    request_body=pb.BodyResponse(
        response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=k, raw_value=v),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                    for k, v in (("x-cascade-tier", b"weak"), ("x-cascade-classifier", b"pass"))
                ]
            ),
            clear_route_cache=True,
        )
    )
)
HEADERS_BYTES: bytes = HEADERS.SerializeToString()
BODY_BYTES: bytes = BODY.SerializeToString()
SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class PassThrough(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: object
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for request in request_iterator:
            yield BODY if request.HasField("request_body") else HEADERS


class PassThroughSession:
    """The same answers on the h2 transport (parsing each message, as grpc.aio does)."""

    done = False

    def message(self, raw: bytes) -> bytes:
        request = pb.ProcessingRequest.FromString(raw)
        return BODY_BYTES if request.HasField("request_body") else HEADERS_BYTES

    def close(self) -> None:
        pass


async def serve_grpcio(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(PassThrough(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_h2(port: int) -> None:
    serving = SERVING.SerializeToString()
    server = H2Server(
        {"/envoy.service.ext_proc.v3.ExternalProcessor/Process": lambda _: PassThroughSession()},
        {"/grpc.health.v1.Health/Check": lambda _raw, _metadata: serving},
        64 * 1024 * 1024,
    )
    await server.start("127.0.0.1", port)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--transport", choices=["grpcio", "h2"], default="grpcio")
    args = parser.parse_args()
    asyncio.run(serve_h2(args.port) if args.transport == "h2" else serve_grpcio(args.port))


if __name__ == "__main__":
    main()
