"""The upstream (per-attempt) role: fallback counting and the model of the chosen host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2, text_format

from extproc.app.run import CascadeServer, ServeOptions
from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, compile_config
from extproc.routing.attributes import parse_host_metadata
from extproc.routing.observer import RequestInfo
from extproc.routing.upstream import UpstreamProcessor
from tests.conftest import chat_body
from tests.protocol.streams import common_of, request_body, request_headers, set_headers

REWRITING = DEFAULT_CONFIG.read_text()  # rewrite_model: true, the default
PASSING = REWRITING.replace("rewrite_model: true", "rewrite_model: false")


class Fallbacks:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def fell_back(self, from_tier: str, to_tier: str, request: RequestInfo) -> None:
        self.seen.append((from_tier, to_tier, request.request_id))

    def __getattr__(self, name: str) -> object:  # every other observer hook: ignore
        return lambda *args, **kwargs: None


def host_metadata(tier: str, model: str) -> str:
    """What Envoy sends for `xds.upstream_host_metadata`: text-format `Metadata`."""
    metadata = base_pb2.Metadata()
    metadata.filter_metadata["cascade"].update({"model": model, "tier": tier})
    return text_format.MessageToString(metadata, as_one_line=True)


def upstream_headers(
    decided: str, host: tuple[str, str] | None, *, shadow: bool = False
) -> pb.ProcessingRequest:
    extra = {"x-cascade-tier": decided} if decided else {}
    if shadow:
        extra["x-cascade-shadow-of"] = "weak"
    message = request_headers(extra=extra)
    attributes = struct_pb2.Struct()
    attributes.update({"upstream.address": "127.0.0.1:18081"})
    attributes.update(
        {"xds.upstream_host_metadata": host_metadata(*host) if host is not None else "NULL"}
    )
    message.attributes["envoy.filters.http.ext_proc"].CopyFrom(attributes)
    return message


def run(
    snapshot: Snapshot, *messages: pb.ProcessingRequest
) -> tuple[list[pb.ProcessingResponse], Fallbacks]:
    observer = Fallbacks()
    processor = UpstreamProcessor(snapshot, observer)  # type: ignore[arg-type]
    return [processor.handle(m) for m in messages], observer


@pytest.fixture
def rewriting() -> Snapshot:
    return compile_config(REWRITING, "rewriting.yaml")


def test_parse_host_metadata_reads_tier_and_model() -> None:
    assert parse_host_metadata(host_metadata("weak", "qwen3-4b")) == ("weak", "qwen3-4b")
    assert parse_host_metadata("NULL") == ("", "")
    assert parse_host_metadata("") == ("", "")
    assert parse_host_metadata("not { text format") == ("", "")


def test_fallback_attempt_is_counted_and_model_rewritten(rewriting: Snapshot) -> None:
    body = chat_body("please refactor this", model="glm-5")
    answers, observer = run(
        rewriting, upstream_headers("strong", ("weak", "qwen3-4b")), request_body(body)
    )
    assert observer.seen == [("strong", "weak", "req-1")]
    assert answers[0] == pb.ProcessingResponse(request_headers=pb.HeadersResponse())
    common = common_of(answers[1])
    new_body = common.body_mutation.body
    assert orjson.loads(new_body)["model"] == "qwen3-4b"
    assert orjson.loads(new_body)["messages"] == orjson.loads(body)["messages"]
    assert set_headers(answers[1]) == {"content-length": str(len(new_body))}
    assert not common.clear_route_cache  # ignored upstream anyway


def test_same_tier_is_not_a_fallback_and_same_model_is_left_alone(rewriting: Snapshot) -> None:
    answers, observer = run(
        rewriting,
        upstream_headers("strong", ("strong", "glm-5")),
        request_body(chat_body("x", model="glm-5")),
    )
    assert observer.seen == []
    assert answers[1] == pb.ProcessingResponse(request_body=pb.BodyResponse())


def test_shadow_copy_is_not_a_fallback_but_gets_the_host_model(rewriting: Snapshot) -> None:
    answers, observer = run(
        rewriting,
        upstream_headers("weak", ("strong", "glm-5"), shadow=True),
        request_body(chat_body("hi", model="qwen3-4b")),
    )
    assert observer.seen == []
    assert orjson.loads(common_of(answers[1]).body_mutation.body)["model"] == "glm-5"


def test_without_rewrite_model_the_body_is_untouched() -> None:
    assert "rewrite_model: true" in REWRITING
    answers, observer = run(
        compile_config(PASSING),
        upstream_headers("strong", ("weak", "qwen3-4b")),
        request_body(chat_body("x", model="glm-5")),
    )
    assert observer.seen == [("strong", "weak", "req-1")]  # still counted
    assert answers[1] == pb.ProcessingResponse(request_body=pb.BodyResponse())


@pytest.mark.parametrize(
    ("decided", "host", "body"),
    [
        ("strong", None, chat_body("x")),  # no metadata (NULL)
        ("strong", ("weak", "qwen3-4b"), b"{not json"),
        ("strong", ("weak", "qwen3-4b"), b"[1, 2]"),
        ("strong", ("weak", "qwen3-4b"), b""),
    ],
)
def test_unusual_attempts_pass_unchanged(
    rewriting: Snapshot, decided: str, host: tuple[str, str] | None, body: bytes
) -> None:
    answers, observer = run(rewriting, upstream_headers(decided, host), request_body(body))
    assert answers[1] == pb.ProcessingResponse(request_body=pb.BodyResponse())
    if host is None:
        assert observer.seen == []


def test_unclassified_request_is_not_counted_but_gets_the_host_model(rewriting: Snapshot) -> None:
    answers, observer = run(
        rewriting, upstream_headers("", ("weak", "qwen3-4b")), request_body(chat_body("x"))
    )
    assert observer.seen == []
    assert orjson.loads(common_of(answers[1]).body_mutation.body)["model"] == "qwen3-4b"


def test_stale_content_length_from_an_earlier_attempt_is_corrected(rewriting: Snapshot) -> None:
    """Envoy keeps upstream header changes across attempts: attempt 2 set content-length for
    a rewritten body, attempt 3 replays the original body under that header."""
    body = chat_body("please refactor this", model="glm-5")
    headers_message = upstream_headers("strong", ("strong", "glm-5"))
    for header in headers_message.request_headers.headers.headers:
        if header.key == "content-length":
            header.raw_value = str(len(body) + 3).encode()
            break
    else:
        headers_message.request_headers.headers.headers.add(
            key="content-length", raw_value=str(len(body) + 3).encode()
        )
    answers, _ = run(rewriting, headers_message, request_body(body))
    common = common_of(answers[1])
    assert set_headers(answers[1]) == {"content-length": str(len(body))}
    assert not common.HasField("body_mutation")


def test_other_phases_get_their_empty_answer(rewriting: Snapshot) -> None:
    trailers = pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
    answers, _ = run(rewriting, trailers)
    assert answers[0].WhichOneof("response") == "request_trailers"


# -- role selection over real gRPC ---------------------------------------------------------------


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    config = tmp_path / "cascade.yaml"
    config.write_text(REWRITING)
    server = CascadeServer(
        ServeOptions(config=config, listen="127.0.0.1:0", drain_delay=0.0, grace=1.0)
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
            yield chan
    finally:
        await server.shutdown()


async def exchange(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], *messages: object
) -> list[pb.ProcessingResponse]:
    call = pb_grpc.ExternalProcessorStub(channel).Process(metadata=metadata)
    answers = []
    for message in messages:
        await call.write(message)
        answers.append(await asyncio.wait_for(call.read(), 5))
    await call.done_writing()
    return answers


async def test_metadata_selects_the_upstream_role(channel: grpc.aio.Channel) -> None:
    body = chat_body("please refactor this", model="glm-5")
    upstream = await exchange(
        channel,
        (("x-cascade-role", "upstream"),),
        upstream_headers("strong", ("weak", "qwen3-4b")),
        request_body(body),
    )
    assert orjson.loads(common_of(upstream[1]).body_mutation.body)["model"] == "qwen3-4b"
    assert "x-cascade-tier" not in set_headers(upstream[1])
    # without the metadata the same messages are classified
    downstream = await exchange(channel, (), request_headers(), request_body(body))
    assert set_headers(downstream[1])["x-cascade-tier"] == "strong"
