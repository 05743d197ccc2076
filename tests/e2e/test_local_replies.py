"""Envoy's own replies reach the client as OpenAI-style JSON errors (`local_reply_config`),
so an SDK shows a readable message instead of `text/plain`; other answers pass unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Gateway


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("local-replies"), "envoy: {max_request_bytes: 1048576}"
    )
    try:
        yield gateway
    finally:
        gateway.close()


def error_of(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    assert set(document) == {"error"}
    error: dict[str, object] = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_an_oversized_body_is_a_json_413(small: Gateway) -> None:
    reply = small.chat("x" * 1_500_000)
    assert reply.status == 413
    assert reply.headers["content-type"].startswith("application/json")
    error = error_of(reply.body)
    assert error["type"] == "invalid_request_error"
    assert "larger" in str(error["message"])


def test_no_reachable_backend_is_a_json_503(small: Gateway) -> None:
    weak = small.backends["weak"]
    small.loop.run(weak.stop())  # connection refused on every attempt
    reply = small.chat("hello")
    assert reply.status == 503
    assert reply.headers["content-type"].startswith("application/json")
    assert error_of(reply.body)["type"] == "server_error"


def test_a_backends_own_error_passes_unchanged(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    try:
        reply = gateway.chat("hello", headers={"x-mock-fail": "400"})
        assert reply.status == 400
        assert reply.headers["x-mock-backend"] == "weak"  # the backend's answer, not Envoy's
    finally:
        gateway.close()
