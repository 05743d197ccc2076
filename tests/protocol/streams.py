"""Builders of ext_proc request messages, as Envoy sends them."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb


def request_headers(
    path: str = "/v1/chat/completions",
    method: str = "POST",
    *,
    end_of_stream: bool = False,
    extra: dict[str, str] | None = None,
) -> pb.ProcessingRequest:
    values = {
        ":path": path,
        ":method": method,
        ":authority": "gateway",
        "content-type": "application/json",
        "x-request-id": "req-1",
        **(extra or {}),
    }
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()
                ]
            ),
            end_of_stream=end_of_stream,
        )
    )


def request_body(body: bytes, *, end_of_stream: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=end_of_stream))


def set_headers(response: pb.ProcessingResponse) -> dict[str, str]:
    kind = response.WhichOneof("response")
    common = getattr(response, kind).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def common_of(response: pb.ProcessingResponse) -> pb.CommonResponse:
    kind = response.WhichOneof("response")
    return getattr(response, kind).response  # type: ignore[no-any-return]
