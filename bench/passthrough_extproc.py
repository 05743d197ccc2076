"""A minimal grpc.aio ext_proc server: the baseline `cascade serve` is compared against.

It answers request headers with nothing and the buffered body with a fixed tier header plus
`clear_route_cache`, doing no parsing or classification at all.

    python bench/passthrough_extproc.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

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


class PassThrough(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: object
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for request in request_iterator:
            yield BODY if request.HasField("request_body") else HEADERS


async def main(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(PassThrough(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
