"""Property: whatever Envoy sends, the processor never raises and answers each message in kind."""

from __future__ import annotations

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.config.snapshot import DEFAULT_CONFIG, load_snapshot
from extproc.routing.processor import RequestProcessor
from tests.protocol.streams import request_body, request_headers

SNAPSHOT = load_snapshot(DEFAULT_CONFIG)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", 3, None])},
    optional={"content": json_values},
)
chat_like = st.fixed_dictionaries(
    {},
    optional={"messages": st.lists(message_like, max_size=6) | json_values, "model": json_values},
).map(orjson.dumps)
bodies = st.binary(max_size=200) | chat_like

messages = st.one_of(
    st.builds(
        request_headers,
        path=st.sampled_from(
            ["/v1/chat/completions", "/v1/models", "/", "/v1/chat/completions?x=1"]
        ),
        method=st.sampled_from(["GET", "POST"]),
        end_of_stream=st.booleans(),
    ),
    st.builds(request_body, bodies, end_of_stream=st.booleans()),
    st.just(pb.ProcessingRequest(request_trailers=pb.HttpTrailers())),
    st.just(pb.ProcessingRequest(response_headers=pb.HttpHeaders())),
    st.builds(
        lambda b: pb.ProcessingRequest(response_body=pb.HttpBody(body=b)), st.binary(max_size=50)
    ),
    st.just(pb.ProcessingRequest(response_trailers=pb.HttpTrailers())),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, min_size=1, max_size=8))
def test_processor_answers_every_message_in_kind(sequence: list[pb.ProcessingRequest]) -> None:
    processor = RequestProcessor(SNAPSHOT)
    for message in sequence:
        answer = processor.handle(message)
        kind = answer.WhichOneof("response")
        if kind == "immediate_response":
            assert message.WhichOneof("request") == "request_body"
            assert answer.immediate_response.status.code == 400
            assert processor.done
            break
        assert kind == message.WhichOneof("request")


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_any_body_gets_a_tier_or_a_400(body: bytes) -> None:
    processor = RequestProcessor(SNAPSHOT)
    processor.handle(request_headers())
    answer = processor.handle(request_body(body))
    kind = answer.WhichOneof("response")
    if kind == "immediate_response":
        assert (
            orjson.loads(answer.immediate_response.body)["error"]["type"] == "invalid_request_error"
        )
    else:
        assert kind == "request_body"
        tiers = {
            h.header.raw_value
            for h in answer.request_body.response.header_mutation.set_headers
            if h.header.key == "x-cascade-tier"
        }
        assert tiers <= {b"weak", b"strong"} and len(tiers) == 1
