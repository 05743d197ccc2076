"""`gate.logprobs.request`: the gate asks the weak backend for logprobs the client did not ask
for, judges them, and strips them from the answer the client gets. Both gate modes: the cheap
one (`streams: false`, the body buffered by Envoy) and the held one (`streams: true`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import Gateway, reset_backends, serving

#: the mock's logprobs give this text a mean of -0.38 and the next one -0.56 (deterministic)
CONFIDENT = "Paris is the capital of France and its largest city by far."
UNSURE = "Binary search halves the interval each step until the target is found or the interval is empty."


@pytest.fixture(scope="module", params=[False, True], ids=["buffered", "held"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    streams = bool(request.param)

    def edit(document: dict[str, Any], gateway: Gateway) -> None:
        document["tiers"][0]["gate"] = {
            "streams": streams,
            "logprobs": {"request": True, "mean_min": -0.5},
        }

    gateway = Gateway(tmp_path_factory.mktemp("gate_logprobs"), edit_config=edit)
    yield from serving(gateway)


@pytest.fixture(autouse=True)
def clean(stack: Gateway) -> None:
    reset_backends(stack)


def test_logprobs_asked_for_judged_and_stripped(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": CONFIDENT}])
    reply = stack.chat("hello")
    assert reply.status == 200, reply.body
    assert reply.headers["x-mock-backend"] == "weak"
    assert reply.headers["x-cascade-confidence"] == "1.000"
    choice = reply.json()["choices"][0]
    assert choice["message"]["content"] == CONFIDENT
    assert choice["logprobs"] is None  # the client did not ask
    assert reply.headers.get("content-length") in (None, str(len(reply.body)))
    (weak,) = stack.backends["weak"].requests
    assert weak.content_length == weak.body_length  # the rewritten request is consistent


def test_low_logprobs_escalate(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": UNSURE}])
    reply = stack.chat("hello")
    assert reply.headers["x-mock-backend"] == "strong"
    assert reply.headers["x-cascade-escalated"] == "weak->strong"
    assert reply.headers["x-cascade-confidence"] == "0.600"  # logprob_mean (0.4)
    assert reply.json()["choices"][0]["logprobs"] is None  # strong was not asked


def test_logprobs_the_client_asked_for_are_kept(stack: Gateway) -> None:
    stack.backends["weak"].script([{"content": CONFIDENT}])
    reply = stack.chat("hello", logprobs=True)
    assert reply.headers["x-mock-backend"] == "weak"
    assert reply.json()["choices"][0]["logprobs"]["content"]
