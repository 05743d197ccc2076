"""The gate's Envoy rendering, the classifier's marker and the per-attempt hold, without sockets."""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, compile_config
from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.classify import Decision
from extproc.gateway.render import bootstrap
from extproc.routing import gate_attempt
from extproc.routing.gate_attempt import EscalationTable, marker
from extproc.routing.observer import GateInfo, RequestInfo
from extproc.routing.upstream import UpstreamProcessor

WEAK = "  - name: weak\n    model: qwen3-4b\n"


def config_with(gate: str) -> Snapshot:
    text = DEFAULT_CONFIG.read_text()
    assert WEAK in text
    return compile_config(text.replace(WEAK, WEAK + f"    gate: {gate}\n"))


def gated() -> Snapshot:
    """The cheap mode: only the gated attempt asks for its response (a mode override)."""
    return config_with("{streams: false}")


def holding() -> Snapshot:
    """The default: the aggregate's filter sees every response; the server holds answers."""
    return config_with("{hold_tokens: 2}")


def clusters(snapshot: Snapshot) -> dict[str, Any]:
    return {c["name"]: c for c in bootstrap(snapshot)["static_resources"]["clusters"]}


def route(snapshot: Snapshot, name: str) -> dict[str, Any]:
    listener = bootstrap(snapshot)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    return next(r for r in host["routes"] if r["name"] == name)


def test_without_a_gate_nothing_gate_related_is_rendered() -> None:
    text = yaml.safe_dump(bootstrap(compile_config(DEFAULT_CONFIG.read_text())))
    for fragment in ("retriable-headers", "x-cascade-escalate", "allow_mode_override"):
        assert fragment not in text
    assert "tier_weak_fallback" not in text


def test_a_gated_tier_routes_to_an_aggregate_that_retries_marked_answers() -> None:
    snapshot = gated()
    weak = route(snapshot, "tier_weak")["route"]
    assert weak["cluster"] == "tier_weak_fallback"
    policy = weak["retry_policy"]
    assert "retriable-headers" in policy["retry_on"].split(",")
    assert policy["retriable_headers"] == [{"name": "x-cascade-escalate", "present_match": True}]
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    aggregate = clusters(snapshot)["tier_weak_fallback"]
    assert aggregate["cluster_type"]["typed_config"]["clusters"] == ["tier_weak", "tier_strong"]
    options = aggregate["typed_extension_protocol_options"]
    ext_proc = next(iter(options.values()))["http_filters"][0]["typed_config"]
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert ext_proc["processing_mode"]["response_body_mode"] == "NONE"  # per attempt only
    held = clusters(holding())["tier_weak_fallback"]["typed_extension_protocol_options"]
    held_proc = next(iter(held.values()))["http_filters"][0]["typed_config"]
    assert "allow_mode_override" not in held_proc  # Envoy ignores it in this mode
    assert held_proc["send_body_without_waiting_for_header_response"] is True
    assert held_proc["processing_mode"]["response_header_mode"] == "SEND"
    assert held_proc["processing_mode"]["response_body_mode"] == "STREAMED"
    assert held_proc["max_message_timeout"] == "1.500s"  # the 500 ms hold + 1 s
    # the top tier keeps its own route: no gate retries there
    strong = route(snapshot, "tier_strong")["route"]["retry_policy"]
    assert "retriable-headers" not in strong["retry_on"]


def chat(body: dict[str, Any]) -> ChatRequest:
    parsed = parse_chat(orjson.dumps({"messages": [{"role": "user", "content": "x"}], **body}))
    assert isinstance(parsed, ChatRequest)
    return parsed


def decision(rule: str = "default", score: float | None = None) -> Decision:
    return Decision("weak", "v7", rule, rule, score=score, threshold=0.5 if score else None)


def test_the_marker() -> None:
    snapshot = gated()
    assert marker(snapshot, decision(), chat({})) == (("x-cascade-gate", "answer"),)
    assert marker(snapshot, decision(), chat({"stream": True})) == (("x-cascade-gate", "stream"),)
    assert marker(snapshot, decision(score=0.45), chat({})) == (("x-cascade-gate", "answer;near"),)
    assert marker(snapshot, decision(), None) == ()
    strong = Decision("strong", "v7", "keyword", "keyword")
    assert marker(snapshot, strong, chat({})) == ()
    assert marker(compile_config(DEFAULT_CONFIG.read_text()), decision(), chat({})) == ()


def test_the_escalation_table_is_bounded() -> None:
    table = EscalationTable(max_entries=2)
    for request_id in ("a", "b", "c"):
        table.put(request_id, "weak->strong", "0.5")
    assert table.pop("a") is None  # the oldest went
    assert table.pop("c") == ("weak->strong", "0.5")
    assert table.pop("c") is None  # taken once
    table.put("", "weak->strong", "0.5")
    assert table.pop("") is None
    old = EscalationTable(max_age_s=0.0)
    old.put("x", "weak->strong", "0.5")
    assert old.pop("x") is None


class Gates:
    def __init__(self) -> None:
        self.seen: list[GateInfo] = []

    def gated(self, gate: GateInfo, request: RequestInfo) -> None:
        self.seen.append(gate)

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def header(key: str, value: str) -> base_pb2.HeaderValue:
    return base_pb2.HeaderValue(key=key, raw_value=value.encode())


def attempt_headers(host_tier: str, mark: str = "answer") -> pb.ProcessingRequest:
    request = pb.ProcessingRequest()
    for key, value in (
        (":path", "/v1/chat/completions"),
        ("x-request-id", f"req-{host_tier}-{mark}"),
        ("x-cascade-tier", "weak"),
        ("x-cascade-gate", mark),
    ):
        request.request_headers.headers.headers.append(header(key, value))
    request.attributes["envoy.filters.http.ext_proc"].fields[
        "xds.upstream_host_metadata"
    ].string_value = f'filter_metadata {{ key: "cascade" value {{ fields {{ key: "tier" value {{ string_value: "{host_tier}" }} }} }} }}'
    return request


def answer_body(content: str) -> bytes:
    return orjson.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]})


def run(processor: UpstreamProcessor, content: str) -> pb.ProcessingResponse:
    response = pb.ProcessingRequest()
    response.response_headers.headers.headers.append(header(":status", "200"))
    assert processor.handle(response).HasField("response_headers")
    body = pb.ProcessingRequest()
    body.response_body.body = answer_body(content)
    body.response_body.end_of_stream = True
    return processor.handle(body)


def set_headers(answer: pb.ProcessingResponse) -> dict[str, str]:
    mutation = answer.response_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def test_the_gated_attempt_asks_for_its_response_and_marks_a_failing_answer() -> None:
    observer = Gates()
    processor = UpstreamProcessor(gated(), observer)  # type: ignore[arg-type]
    first = processor.handle(attempt_headers("weak"))
    mode = first.mode_override
    assert (mode.response_header_mode, mode.response_body_mode) == (
        modes.ProcessingMode.SEND,
        modes.ProcessingMode.BUFFERED,
    )
    assert mode.request_body_mode == modes.ProcessingMode.BUFFERED  # the rewrite keeps working
    marked = set_headers(run(processor, "I'm sorry, but I can't help with that."))
    assert marked == {"x-cascade-confidence": "0.500", "x-cascade-escalate": "weak->strong"}
    assert [g.escalate_to for g in observer.seen] == ["strong"]
    # the attempt that follows learns it is an escalation
    follow = UpstreamProcessor(gated(), observer)  # type: ignore[arg-type]
    request = attempt_headers("strong")
    request.request_headers.headers.headers[1].raw_value = b"req-weak-answer"
    assert follow.handle(request).mode_override.response_header_mode == modes.ProcessingMode.SEND
    status = pb.ProcessingRequest()
    status.response_headers.headers.headers.append(header(":status", "200"))
    mutation = follow.handle(status).response_headers.response.header_mutation
    assert {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers} == {
        "x-cascade-escalated": "weak->strong",
        "x-cascade-confidence": "0.500",
    }


def test_a_passing_answer_only_gets_its_confidence() -> None:
    processor = UpstreamProcessor(gated(), Gates())  # type: ignore[arg-type]
    processor.handle(attempt_headers("weak", "answer"))
    assert set_headers(run(processor, "Paris is the capital of France.")) == {
        "x-cascade-confidence": "1.000"
    }


def test_unmarked_streamed_and_last_hop_attempts_are_not_held() -> None:
    for host, mark in (("weak", ""), ("weak", "stream"), ("strong", "answer")):
        processor = UpstreamProcessor(gated(), Gates())  # type: ignore[arg-type]
        first = processor.handle(attempt_headers(host, mark))
        assert not first.HasField("mode_override"), (host, mark)
        assert processor.gate is None


def test_a_non_200_answer_is_skipped() -> None:
    observer = Gates()
    processor = UpstreamProcessor(gated(), observer)  # type: ignore[arg-type]
    processor.handle(attempt_headers("weak"))
    status = pb.ProcessingRequest()
    status.response_headers.headers.headers.append(header(":status", "503"))
    processor.handle(status)
    body = pb.ProcessingRequest()
    body.response_body.body = b'{"error": {}}'
    body.response_body.end_of_stream = True
    assert not processor.handle(body).response_body.HasField("response")
    assert [g.skipped for g in observer.seen] == ["status"]
    assert gate_attempt.ESCALATIONS.pop("req-weak-answer") is None


def chunk(text: str, eos: bool = False, finish: str | None = None) -> pb.ProcessingRequest:
    event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    request = pb.ProcessingRequest()
    request.response_body.body = b"data: " + orjson.dumps(event) + b"\n\n"
    request.response_body.end_of_stream = eos
    return request


def test_a_held_stream_is_answered_all_at_once_after_the_hold() -> None:
    processor = UpstreamProcessor(holding(), Gates())  # type: ignore[arg-type]
    processor.handle_all(attempt_headers("weak", "stream"))
    status = pb.ProcessingRequest()
    status.response_headers.headers.headers.append(header(":status", "200"))
    (wait,) = processor.handle_all(status)
    assert wait.HasField("override_message_timeout")
    assert processor.handle_all(chunk("Paris")) == []  # held: no answer yet
    released = processor.handle_all(chunk(" is"))  # 2 tokens: the hold is over
    assert [a.WhichOneof("response") for a in released] == [
        "response_headers",
        "response_body",
        "response_body",
    ]
    mutation = released[0].response_headers.response.header_mutation
    assert [h.header.key for h in mutation.set_headers] == ["x-cascade-confidence"]
    later = processor.handle_all(chunk(" the capital.", eos=True))
    assert [a.WhichOneof("response") for a in later] == ["response_body"]  # at once


def test_a_held_stream_that_fails_is_marked_for_escalation() -> None:
    processor = UpstreamProcessor(holding(), Gates())  # type: ignore[arg-type]
    processor.handle_all(attempt_headers("weak", "stream"))
    status = pb.ProcessingRequest()
    status.response_headers.headers.headers.append(header(":status", "200"))
    processor.handle_all(status)
    assert processor.handle_all(chunk("I'm sorry, but I can't help")) == []
    released = processor.handle_all(chunk(" with that."))
    keys = [h.header.key for h in released[0].response_headers.response.header_mutation.set_headers]
    assert "x-cascade-escalate" in keys
    gate_attempt.ESCALATIONS.pop("req-weak-stream")


def test_a_held_non_200_is_released_at_once() -> None:
    processor = UpstreamProcessor(holding(), Gates())  # type: ignore[arg-type]
    processor.handle_all(attempt_headers("weak", "answer"))
    status = pb.ProcessingRequest()
    status.response_headers.headers.headers.append(header(":status", "503"))
    assert [a.WhichOneof("response") for a in processor.handle_all(status)] == ["response_headers"]
    assert [a.WhichOneof("response") for a in processor.handle_all(chunk("x", eos=True))] == [
        "response_body"
    ]
