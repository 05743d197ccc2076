"""Response-side telemetry through the real Envoy: tokens, cost, TTFT, served tier, feedback.

One stack with prices, a decision log and response processing on (the default); the metrics
endpoint of `cascade serve` is scraped over HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc._pb.cascade.v1 import cascade_pb2, cascade_pb2_grpc
from tests.conftest import API_AUTH
from tests.e2e.harness import Gateway, serving, stream_events, wait_for

PRICES = {
    "weak": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
    "strong": {"input_per_mtok": 2.0, "output_per_mtok": 8.0, "per_hour": 36.0},
}


def _edit(document: dict[str, Any], gateway: Gateway) -> None:
    for tier in document["tiers"]:
        tier["price"] = PRICES[tier["name"]]
    document["telemetry"] = {
        "decision_log": {"path": str(gateway.workdir / "decisions.jsonl")},
        "retry": {"window_s": 60},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("observability"), stream_delay_ms=60, edit_config=_edit
    )
    yield from serving(gateway)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one series name, keyed by its sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v for key, v in samples(text, name).items() if all((k, labels[k]) in key for k in labels)
    )


def chat_body(text: str, **extra: Any) -> bytes:
    return json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


def wait_metric(stack: Gateway, name: str, at_least: float, **labels: str) -> str:
    text = ""

    def reached() -> bool:
        nonlocal text
        text = stack.metrics()
        return value(text, name, **labels) >= at_least

    wait_for(reached, 10, f"{name}{labels} >= {at_least}")
    return text


def test_plain_json_answer_counts_tokens_and_cost(stack: Gateway) -> None:
    before = stack.metrics()
    reply = stack.chat("please refactor this function")
    assert reply.status == 200
    usage = reply.json()["usage"]
    text = wait_metric(
        stack,
        "cascade_tokens_total",
        value(before, "cascade_tokens_total", tier="strong", kind="output")
        + usage["completion_tokens"],
        tier="strong",
        kind="output",
    )
    added_in = value(text, "cascade_tokens_total", tier="strong", kind="input") - value(
        before, "cascade_tokens_total", tier="strong", kind="input"
    )
    assert added_in == usage["prompt_tokens"]
    expected = (
        2.0 * usage["prompt_tokens"] / 1e6
        + 8.0 * usage["completion_tokens"] / 1e6
        + 36.0 / 3600 * usage["completion_tokens"] / 1000
    )
    added_cost = value(text, "cascade_cost_dollars_total", tier="strong") - value(
        before, "cascade_cost_dollars_total", tier="strong"
    )
    assert added_cost == pytest.approx(expected, rel=1e-9)
    assert (
        value(
            text,
            "cascade_responses_total",
            tier="strong",
            served_tier="strong",
            status="200",
            classifier="v7",
        )
        >= 1
    )
    assert value(text, "cascade_tier_price_per_hour_dollars", tier="strong") == 36.0


def test_streamed_answer_stays_incremental_and_counts_usage(stack: Gateway) -> None:
    before = stack.metrics()
    body = chat_body("hello there", stream=True, stream_options={"include_usage": True})
    arrivals = list(stream_events(stack.port, body))
    # 60 ms between events: with each chunk answered at once they still arrive spread out
    assert len(arrivals) >= 4
    assert arrivals[-1][0] - arrivals[0][0] > 0.15
    raw = b"".join(chunk for _t, chunk in arrivals)
    usage = None
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage":{' in line:
            usage = orjson.loads(line[6:])["usage"]
    assert usage is not None
    text = wait_metric(
        stack,
        "cascade_tokens_total",
        value(before, "cascade_tokens_total", tier="weak", kind="output")
        + usage["completion_tokens"],
        tier="weak",
        kind="output",
    )
    ttft = value(text, "cascade_ttft_seconds_count", tier="weak") - value(
        before, "cascade_ttft_seconds_count", tier="weak"
    )
    assert ttft == 1
    added = value(text, "cascade_cost_dollars_total", tier="weak") - value(
        before, "cascade_cost_dollars_total", tier="weak"
    )
    expected = 0.1 * usage["prompt_tokens"] / 1e6 + 0.4 * usage["completion_tokens"] / 1e6
    assert added == pytest.approx(expected, rel=1e-9)
    # the whole answer took ≥ 4 × 60 ms; TTFT is the first chunk, well before the end
    duration_sum = value(text, "cascade_response_duration_seconds_sum", tier="weak") - value(
        before, "cascade_response_duration_seconds_sum", tier="weak"
    )
    assert duration_sum > 0.2


def test_decision_metrics_and_parse_failures(stack: Gateway) -> None:
    before = stack.metrics()
    stack.request("POST", "/v1/chat/completions", b"{nope", {"content-type": "application/json"})
    stack.chat("x" * 600)
    text = wait_metric(
        stack,
        "cascade_parse_failures_total",
        value(before, "cascade_parse_failures_total", kind="invalid_body") + 1,
        kind="invalid_body",
    )
    assert (
        value(text, "cascade_decisions_total", tier="strong", classifier="v7", rule="long_text")
        >= 1
    )
    assert value(text, "cascade_classify_duration_seconds_count") >= 2
    assert samples(text, "cascade_inflight_streams")


def test_retry_after_weak_answer_is_a_suspected_false_negative(stack: Gateway) -> None:
    before = stack.metrics()
    user = {"x-user-id": f"user-{time.monotonic_ns()}"}
    first = stack.chat("how do I reverse a list in python", headers=user)
    assert first.headers["x-mock-backend"] == "weak"
    time.sleep(0.3)  # the first answer's record is processed in the background
    stack.chat("how do I reverse a list in python?", headers=user)
    stack.chat("what is the capital of France", headers=user)  # not similar
    text = wait_metric(
        stack,
        "cascade_misroute_suspected_total",
        value(before, "cascade_misroute_suspected_total", signal="retry") + 1,
        kind="false_negative",
        signal="retry",
    )
    assert (
        value(text, "cascade_misroute_suspected_total", signal="retry")
        == value(before, "cascade_misroute_suspected_total", signal="retry") + 1
    )
    log = stack.workdir / "decisions.jsonl"
    records: list[dict[str, Any]] = []

    def logged() -> bool:
        records[:] = [json.loads(line) for line in log.read_text().splitlines()]
        return any(r.get("retry_of") for r in records)

    wait_for(logged, 10, "the retry in the decision log")
    retry = next(r for r in records if r.get("retry_of"))
    assert retry["fn_suspect"] is True
    assert retry["signals"] == ["retry"]
    assert retry["similarity"] >= 0.8
    original = next(r for r in records if r["id"] == retry["retry_of"])
    assert original["served_tier"] == "weak"
    assert original["user"] == retry["user"] and len(original["user"]) == 24
    for field in ("tier", "classifier", "rule", "keywords", "chars", "bytes", "messages"):
        assert field in original
    assert original["status"] == 200 and original["ttft_ms"] > 0
    assert original["tokens_in"] > 0 and original["cost"] > 0
    assert "messages_text" not in original  # prompt capture is off by default
    assert "how do I" not in log.read_text()


def test_feedback_rpc_on_the_classifier_port(stack: Gateway) -> None:
    request_id = f"fb-{time.monotonic_ns()}"
    reply = stack.chat("hi there", headers={"x-request-id": request_id})
    assert reply.headers["x-mock-backend"] == "weak"
    before = stack.metrics()
    with grpc.insecure_channel(f"127.0.0.1:{stack.classifier_port}") as channel:
        stub = cascade_pb2_grpc.CascadeStub(channel)

        def known() -> bool:
            answer = stub.SubmitFeedback(
                cascade_pb2.SubmitFeedbackRequest(request_id="no-such-id", score=1),
                timeout=5,
                metadata=API_AUTH,
            )
            return not answer.known

        assert known()
        answer = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answer = stub.SubmitFeedback(
                cascade_pb2.SubmitFeedbackRequest(request_id=request_id, score=-1, comment="bad"),
                timeout=5,
                metadata=API_AUTH,
            )
            if answer.known:
                break
            time.sleep(0.1)
        assert answer is not None and answer.known
        assert answer.suspicion == cascade_pb2.SUSPICION_FALSE_NEGATIVE
        decision = stub.Classify(
            cascade_pb2.ClassifyRequest(
                messages=[cascade_pb2.Message(role="user", content="이 모듈을 리팩터링 해줘")]
            ),
            timeout=5,
            metadata=API_AUTH,
        ).decision
        assert (decision.tier, decision.rule, list(decision.keywords)) == (
            "strong",
            "keyword",
            ["리팩터"],
        )
    text = stack.metrics()
    assert (
        value(text, "cascade_feedback_total", score="-1")
        == value(before, "cascade_feedback_total", score="-1") + 1
    )
    assert (
        value(text, "cascade_misroute_suspected_total", kind="false_negative", signal="feedback")
        == value(
            before, "cascade_misroute_suspected_total", kind="false_negative", signal="feedback"
        )
        + 1
    )


def test_decision_log_path_is_per_stack(stack: Gateway) -> None:
    assert Path(stack.workdir / "decisions.jsonl").exists()


def test_trace_context_goes_upstream_through_envoy(tmp_path: Path) -> None:
    """With tracing on, the backend sees a traceparent in the client's trace, naming our span."""
    gateway = Gateway(
        tmp_path,
        classifier_env={"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        client = f"00-{trace_id}-00f067aa0ba902b7-01"
        weak = gateway.backends["weak"]
        weak.clear_requests()
        reply = gateway.chat("hello", headers={"traceparent": client})
        assert reply.status == 200
        upstream = weak.requests[-1].headers["traceparent"]
        version, seen_trace, span_id, _flags = upstream.split("-")
        assert (version, seen_trace) == ("00", trace_id)
        assert span_id != "00f067aa0ba902b7"
        log = tmp_path / "classifier.log"
        wait_for(lambda: span_id in log.read_text(), 10, "the span on the console exporter")
        assert '"cascade.tier": "weak"' in log.read_text()
    finally:
        gateway.close()


def test_fallback_shows_the_tier_that_really_served(stack: Gateway) -> None:
    """Strong answers 503: Envoy falls back to weak; the metrics and log name both tiers."""
    before = stack.metrics()
    request_id = f"fallback-{time.monotonic_ns()}"
    reply = stack.chat(
        "please refactor this module",
        headers={"x-mock-fail-strong": "503", "x-request-id": request_id},
    )
    assert reply.status == 200 and reply.headers["x-mock-backend"] == "weak"
    labels = {"tier": "strong", "served_tier": "weak", "status": "200"}
    text = wait_metric(
        stack,
        "cascade_responses_total",
        value(before, "cascade_responses_total", **labels) + 1,
        **labels,
    )
    assert value(text, "cascade_fallbacks_total", from_tier="strong", to_tier="weak") >= 1
    log = stack.workdir / "decisions.jsonl"
    wait_for(lambda: request_id in log.read_text(), 10, "the fallback in the decision log")
    record = next(json.loads(line) for line in log.read_text().splitlines() if request_id in line)
    assert (record["tier"], record["served_tier"], record["fallback"]) == ("strong", "weak", True)
