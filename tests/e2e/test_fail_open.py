"""Fail-open that still serves (docs/resilience.md): while the classifier is down, killed,
stopped or restarting, Envoy fails open to the default tier's route, and the Lua filter after
ext_proc sets the body's `model` to the default tier's model. The mock backends check model
names (`--strict-models`: 404 for a model they do not serve, like vLLM's `--served-model-name`).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from extproc.gateway.lua import UNCLASSIFIED_REASON
from tests.e2e.harness import Gateway, Response, serving, wait_for

MODELS = {"weak": "qwen3-4b", "strong": "glm-5"}
#: what clients send: OpenAI names, the router's `auto`, nothing at all
CLIENT_MODELS = ["auto", "gpt-4o", None, "qwen3-4b"]
CLIENTS = 4
PER_CLIENT = 600  # bound in count (the phases below end the load much earlier)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path, strict_models=True
    )  # rewrite_model on: `unclassified: auto` = rewrite
    yield from serving(gateway)


def chat(
    gateway: Gateway, text: str, model: str | None, *, stream: bool = False, **extra: object
) -> Response:
    document: dict[str, object] = {"messages": [{"role": "user", "content": text}], **extra}
    if model is not None:
        document["model"] = model
    if stream:
        document["stream"] = True
    return gateway.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(document).encode(),
        {"content-type": "application/json"},
    )


def lua_errors(gateway: Gateway) -> int:
    stats = gateway.admin("/stats?filter=lua.cascade_body.errors").body.decode()
    return int(stats.split(":")[1])


def assert_backends_served_every_request(gateway: Gateway) -> int:
    """Every request a backend received named a model it serves and was answered 200."""
    total = 0
    for name, backend in gateway.backends.items():
        for seen in backend.requests:
            assert seen.model == MODELS[name], (name, seen.model, seen.path)
            assert seen.status == 200, (name, seen.status)
            assert seen.content_length in (None, seen.body_length)
            total += 1
    return total


def test_classifier_killed_stopped_and_restarted_under_load(stack: Gateway) -> None:
    results: list[tuple[int, str, str]] = []  # (status, tier decided, served tier)
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        for n in range(PER_CLIENT):
            if stop.is_set():
                return
            text = "please refactor this" if (index + n) % 2 else "hello there"
            model = CLIENT_MODELS[(index + n) % len(CLIENT_MODELS)]
            reply = chat(stack, text, model, stream=n % 5 == 0)
            with lock:
                results.append(
                    (
                        reply.status,
                        reply.headers.get("x-cascade-tier", ""),
                        reply.headers.get("x-cascade-served-tier", ""),
                    )
                )

    def served_since(mark: int, count: int, unclassified: bool) -> bool:
        with lock:
            recent = results[mark:]
        return sum(1 for _, tier, _ in recent if (tier == "") == unclassified) >= count

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, i) for i in range(CLIENTS)]
        try:
            wait_for(lambda: served_since(0, 20, unclassified=False), 30, "classified load")
            # 1. killed: every request fails open
            stack.stop_classifier(signal.SIGKILL)
            mark = len(results)
            wait_for(lambda: served_since(mark, 30, unclassified=True), 30, "fail-open load")
            # 2. back
            stack.start_classifier()
            mark = len(results)
            wait_for(lambda: served_since(mark, 20, unclassified=False), 30, "classified again")
            # 3. stopped (SIGSTOP: connections stay open, nothing answers): message timeouts,
            #    then the health check marks it down and requests fail open at once
            assert stack.classifier is not None
            stack.classifier.send_signal(signal.SIGSTOP)
            mark = len(results)
            wait_for(lambda: served_since(mark, 30, unclassified=True), 30, "stopped: fail-open")
            stack.classifier.send_signal(signal.SIGCONT)
            mark = len(results)
            wait_for(lambda: served_since(mark, 20, unclassified=False), 30, "resumed")
            # 4. restarted (SIGTERM drains, a new process takes the port)
            stack.stop_classifier(signal.SIGTERM)
            stack.start_classifier()
            mark = len(results)
            wait_for(lambda: served_since(mark, 20, unclassified=False), 30, "restarted")
        finally:
            if stack.classifier is not None:
                stack.classifier.send_signal(signal.SIGCONT)
            stop.set()
            for future in futures:
                future.result(timeout=60)
    elapsed = time.monotonic() - started
    statuses = [status for status, _, _ in results]
    failed = {s: statuses.count(s) for s in set(statuses) if s != 200}
    assert failed == {}, failed
    unclassified = [served for _, tier, served in results if tier == ""]
    assert len(unclassified) >= 60
    assert set(unclassified) == {"weak"}  # the default tier
    assert sum(1 for _, tier, _ in results if tier) >= 80
    assert assert_backends_served_every_request(stack) == len(results)
    assert lua_errors(stack) == 0
    print(f"{len(results)} requests in {elapsed:.1f}s, {len(unclassified)} failed open, 0 non-2xx")


def test_unclassified_bodies_keep_their_shape(stack: Gateway) -> None:
    stack.stop_classifier(signal.SIGKILL)
    weak = stack.backends["weak"]
    # no model at all: added; several fields and unicode around it survive
    reply = chat(stack, 'héllo "quoted" {not json}', None, temperature=0.2, n=1)
    assert reply.status == 200, reply.body
    assert reply.headers["x-cascade-reason"] == UNCLASSIFIED_REASON
    seen = weak.requests[-1]
    assert seen.model == "qwen3-4b"
    assert seen.content_length == seen.body_length
    # a nested "model" key is left alone, the top-level one is rewritten
    body = json.dumps(
        {
            "model": "gpt-4o",
            "metadata": {"model": "keep-me"},
            "messages": [{"role": "user", "content": "hi", "model": "x"}],
        }
    ).encode()
    reply = stack.request(
        "POST", "/v1/chat/completions", body, {"content-type": "application/json"}
    )
    assert reply.status == 200, reply.body
    assert reply.json()["model"] == "qwen3-4b"
    # streamed answers still stream
    reply = chat(stack, "hi", "auto", stream=True)
    assert reply.status == 200
    assert b"data: [DONE]" in reply.body
    assert weak.requests[-1].stream and weak.requests[-1].model == "qwen3-4b"
    # not JSON: passed on unchanged, the backend's own 400
    reply = stack.request(
        "POST", "/v1/chat/completions", b"not json", {"content-type": "application/json"}
    )
    assert reply.status == 400
    assert weak.requests[-1].body_length == len(b"not json")
    # no body
    assert stack.request("GET", "/v1/models").status == 200
    assert lua_errors(stack) == 0


def test_reject_mode_answers_an_openai_style_503(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, "envoy: {unclassified: reject}", strict_models=True)
    try:
        assert chat(gateway, "hello", "auto").status == 200  # classified: served
        gateway.stop_classifier(signal.SIGKILL)
        reply = chat(gateway, "hello", "auto")
        assert reply.status == 503
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["code"] == "classifier_unavailable"
        assert gateway.backends["weak"].requests[-1].status == 200  # only the first one
        assert len(gateway.backends["weak"].requests) == 1
    finally:
        gateway.close()
