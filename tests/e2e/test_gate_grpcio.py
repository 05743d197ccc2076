"""The confidence gate with `cascade serve --transport grpcio`: the held answers (none now,
several later) go through the grpc.aio servicer as they do through the h2 transport."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import Gateway, serving
from tests.e2e.test_gate_stream import DELAY_MS, REFUSAL, WORDS, body, events, stream


def edit(document: dict[str, Any], gateway: Gateway) -> None:
    document["tiers"][0]["gate"] = {"hold_tokens": 4, "hold_ms": 2000}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("gate_grpcio"),
        stream_delay_ms=DELAY_MS,
        edit_config=edit,
        serve_args=("--transport", "grpcio"),
    )
    yield from serving(gateway)


def test_streams_escalate_and_pass(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": REFUSAL + " " + WORDS}])
    found, chunks = stream(stack.port, body(), {"x-mock-stream-chunks": "30"})
    assert found["x-mock-backend"] == "strong"
    assert found["x-cascade-escalated"] == "weak->strong"
    assert {e["model"] for e in events(b"".join(c for _, c in chunks))} == {"glm-5"}
    stack.backends["weak"].script([{"content": WORDS}])
    found, chunks = stream(stack.port, body(), {"x-mock-stream-chunks": "30"})
    assert found["x-mock-backend"] == "weak"
    assert found["x-cascade-confidence"] == "1.000"
    assert len(events(b"".join(c for _, c in chunks))) >= 30


def test_non_streamed_escalates_and_passes(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": REFUSAL}])
    reply = stack.chat("hello")
    assert reply.headers["x-mock-backend"] == "strong"
    assert reply.headers["x-cascade-escalated"] == "weak->strong"
    assert stack.chat("hello").headers["x-cascade-confidence"] == "1.000"
