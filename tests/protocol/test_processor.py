"""The per-request processor driven by scripted ext_proc streams (no network)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.snapshot import Snapshot
from extproc.core.classify import Decision
from extproc.routing.observer import DecisionInfo, NullObserver, RequestInfo, Trace
from extproc.routing.processor import Phase, RequestProcessor
from tests.conftest import chat_body
from tests.protocol.streams import common_of, request_body, request_headers, set_headers


class Counting(NullObserver):
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.rejections: list[str] = []
        self.failures = 0

    def decided(self, request: RequestInfo, decided: DecisionInfo, trace: Trace) -> None:
        self.decisions.append(decided.decision)

    def rejected(self, kind: str, request: RequestInfo, trace: Trace) -> None:
        self.rejections.append(kind)

    def classifier_failed(self, request: RequestInfo) -> None:
        self.failures += 1


def run(
    snapshot: Snapshot, *messages: pb.ProcessingRequest
) -> tuple[list[pb.ProcessingResponse], RequestProcessor, Counting]:
    counting = Counting()
    processor = RequestProcessor(snapshot, counting)
    answers = []
    for message in messages:
        answers.append(processor.handle(message))
        processor.after_answer()  # as the transports do once the answer is written
        if processor.done:
            break
    return answers, processor, counting


def test_chat_body_sets_tier_headers_and_clears_route(default_snapshot: Snapshot) -> None:
    answers, processor, counting = run(
        default_snapshot, request_headers(), request_body(chat_body("please refactor this"))
    )
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert not answers[0].request_headers.HasField("response")
    common = common_of(answers[1])
    assert common.clear_route_cache
    # rewrite_model is on by default: the body asks for the decided tier's model
    new_body = common.body_mutation.body
    assert orjson.loads(new_body)["model"] == "glm-5"
    assert set_headers(answers[1]) == {
        "x-cascade-tier": "strong",
        "x-cascade-classifier": "v7",
        "x-cascade-reason": "keyword:refactor",
        "content-length": str(len(new_body)),
    }
    assert all(
        h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in common.header_mutation.set_headers
    )
    assert processor.phase is Phase.DECIDED
    assert [d.tier for d in counting.decisions] == ["strong"]


def test_weak_prompt(default_snapshot: Snapshot) -> None:
    answers, _, _ = run(default_snapshot, request_headers(), request_body(chat_body("hi")))
    assert set_headers(answers[1])["x-cascade-tier"] == "weak"
    assert set_headers(answers[1])["x-cascade-reason"] == "default"


def test_header_only_get_decides_at_header_time(default_snapshot: Snapshot) -> None:
    answers, processor, _ = run(default_snapshot, request_headers(method="GET", end_of_stream=True))
    assert set_headers(answers[0]) == {
        "x-cascade-tier": "weak",
        "x-cascade-classifier": "v7",
        "x-cascade-reason": "no_body",
    }
    assert common_of(answers[0]).clear_route_cache
    assert processor.phase is Phase.DECIDED


def test_unclassified_path_passes_untouched(default_snapshot: Snapshot) -> None:
    answers, processor, counting = run(
        default_snapshot,
        request_headers("/v1/embeddings"),
        request_body(b'{"input": "refactor"}'),
    )
    assert answers == [
        pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
        pb.ProcessingResponse(request_body=pb.BodyResponse()),
    ]
    assert processor.phase is Phase.PASS_THROUGH
    assert counting.decisions == []


def test_query_string_is_ignored_for_path_match(default_snapshot: Snapshot) -> None:
    answers, _, _ = run(
        default_snapshot,
        request_headers("/v1/chat/completions?api-version=1"),
        request_body(chat_body("debug")),
    )
    assert set_headers(answers[1])["x-cascade-tier"] == "strong"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_body"),
        (b"[]", "invalid_body"),
        (b'{"prompt": "hi"}', "invalid_body"),
    ],
)
def test_invalid_chat_body_gets_openai_400(
    default_snapshot: Snapshot, body: bytes, code: str
) -> None:
    answers, processor, counting = run(
        default_snapshot, request_headers(), request_body(body), request_body(b"never read")
    )
    assert len(answers) == 2
    immediate = answers[1].immediate_response
    assert immediate.status.code == 400
    error = orjson.loads(immediate.body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert {h.header.key: h.header.raw_value for h in immediate.headers.set_headers} == {
        "content-type": b"application/json"
    }
    assert immediate.details == f"cascade_{code}"
    assert processor.done
    assert counting.rejections == [code]


def test_oversized_body_fails_open_to_default_tier(
    make_snapshot: Callable[[str], Snapshot],
) -> None:
    snapshot = make_snapshot(
        "tiers: [{name: weak}, {name: strong}]\ndefault_tier: strong\nclassifier: v\n"
        "classifiers: {v: {default: weak}}\nserver: {max_body_bytes: 100}\n"
    )
    answers, _, counting = run(snapshot, request_headers(), request_body(chat_body("x" * 200)))
    assert set_headers(answers[1]) == {
        "x-cascade-tier": "strong",
        "x-cascade-classifier": "v",
        "x-cascade-reason": "unparsed",
    }
    assert counting.rejections == ["too_large"]


def test_invalid_utf8_fails_open(default_snapshot: Snapshot) -> None:
    answers, _, _ = run(
        default_snapshot,
        request_headers(),
        request_body(b'{"messages": [{"role": "user", "content": "\xff"}]}'),
    )
    assert set_headers(answers[1])["x-cascade-reason"] == "unparsed"


def test_classifier_exception_routes_default_and_counts(
    default_snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: object) -> Decision:
        raise RuntimeError("classifier bug")

    monkeypatch.setattr("extproc.routing.processor.classify", boom)
    answers, _, counting = run(default_snapshot, request_headers(), request_body(chat_body("hi")))
    assert set_headers(answers[1])["x-cascade-reason"] == "error"
    assert set_headers(answers[1])["x-cascade-tier"] == "weak"
    assert counting.failures == 1


def test_client_sent_cascade_headers_are_overwritten_or_removed(
    default_snapshot: Snapshot,
) -> None:
    answers, _, _ = run(
        default_snapshot,
        request_headers(extra={"x-cascade-tier": "strong", "x-cascade-debug": "1"}),
        request_body(chat_body("hi")),
    )
    common = common_of(answers[1])
    assert set_headers(answers[1])["x-cascade-tier"] == "weak"
    assert list(common.header_mutation.remove_headers) == ["x-cascade-debug"]


def test_response_phase_and_trailer_messages_get_matching_empty_answers(
    default_snapshot: Snapshot,
) -> None:
    messages = [
        request_headers(),
        pb.ProcessingRequest(request_trailers=pb.HttpTrailers()),
        request_body(chat_body("hi")),
        pb.ProcessingRequest(response_headers=pb.HttpHeaders()),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"data: x\n\n")),
        pb.ProcessingRequest(response_trailers=pb.HttpTrailers()),
    ]
    answers, _, _ = run(default_snapshot, *messages)
    assert [a.WhichOneof("response") for a in answers] == [
        m.WhichOneof("request") for m in messages
    ]


def test_body_without_headers_is_answered_empty(default_snapshot: Snapshot) -> None:
    answers, _, counting = run(default_snapshot, request_body(chat_body("refactor")))
    assert answers == [pb.ProcessingResponse(request_body=pb.BodyResponse())]
    assert counting.decisions == []


def test_streamed_chunks_are_collected(default_snapshot: Snapshot) -> None:
    body = chat_body("please optimize")
    answers, _, _ = run(
        default_snapshot,
        request_headers(),
        request_body(body[:10], end_of_stream=False),
        request_body(body[10:], end_of_stream=True),
    )
    assert answers[1] == pb.ProcessingResponse(request_body=pb.BodyResponse())
    assert set_headers(answers[2])["x-cascade-tier"] == "strong"


MODEL_CONFIG = """
tiers: [{name: weak, model: qwen3-4b}, {name: strong, model: glm-5}]
classifier: v7
classifiers:
  v7:
    default: weak
    rules: [{kind: keyword, tier: strong, keywords: [refactor]}]
server: {rewrite_model: true}
"""


def test_model_rewrite_sets_body_and_content_length(
    make_snapshot: Callable[[str], Snapshot],
) -> None:
    snapshot = make_snapshot(MODEL_CONFIG)
    body = orjson.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": "refactor"}], "n": 1}
    )
    answers, _, _ = run(snapshot, request_headers(), request_body(body))
    common = common_of(answers[1])
    new_body = common.body_mutation.body
    assert orjson.loads(new_body) == {
        "model": "glm-5",
        "messages": [{"role": "user", "content": "refactor"}],
        "n": 1,
    }
    assert set_headers(answers[1])["content-length"] == str(len(new_body))


def test_model_rewrite_skipped_when_model_already_right(
    make_snapshot: Callable[[str], Snapshot],
) -> None:
    body = orjson.dumps({"model": "qwen3-4b", "messages": [{"role": "user", "content": "hi"}]})
    answers, _, _ = run(make_snapshot(MODEL_CONFIG), request_headers(), request_body(body))
    assert not common_of(answers[1]).HasField("body_mutation")
    assert "content-length" not in set_headers(answers[1])


def test_canary_key_header_picks_version(make_snapshot: Callable[[str], Snapshot]) -> None:
    snapshot = make_snapshot(
        "tiers: [{name: weak}, {name: strong}]\nclassifier: v7\n"
        "canary: {version: v8, weight: 100, key_header: x-user-id}\n"
        "classifiers: {v7: {default: weak}, v8: {default: strong}}\n"
    )
    answers, _, _ = run(
        snapshot, request_headers(extra={"x-user-id": "alice"}), request_body(chat_body("hi"))
    )
    assert set_headers(answers[1])["x-cascade-classifier"] == "v8"


async def test_the_h2_session_reports_the_decision_after_the_answer_is_returned(
    default_snapshot: Snapshot,
) -> None:
    """Telemetry waits for the answer: the decision is reported on the next loop turn, after
    the connection wrote what `message` returned (and nothing is scheduled when nothing waits)."""
    import asyncio

    from extproc.transport.grpcio import ExternalProcessor

    counting = Counting()
    session = ExternalProcessor(lambda: default_snapshot, counting).session({})
    session.message(request_headers().SerializeToString())
    assert not session._processor.pending
    answer = session.message(request_body(chat_body("please refactor this")).SerializeToString())
    assert answer and counting.decisions == []
    await asyncio.sleep(0)  # one loop turn: where the connection's write has happened
    assert [d.tier for d in counting.decisions] == ["strong"]
    assert not session._processor.pending
