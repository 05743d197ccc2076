"""The mock OpenAI-compatible backends, over real sockets on 127.0.0.1 (ports chosen at run time)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import math
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cascade_dev.mock_backend import Fault, MockBackend, MockBackendThread

CASCADE = Path(sys.executable).with_name("cascade")
CHAT = "/v1/chat/completions"
TIMEOUT = 5.0


def chat(*contents: str, **extra: Any) -> bytes:
    messages = [{"role": "user", "content": c} for c in contents]
    return json.dumps({"model": "qwen3-4b", "messages": messages, **extra}).encode()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def post_chat(port: int, body: bytes, **headers: str) -> tuple[int, http.client.HTTPMessage, Any]:
    status, head, data = request(port, "POST", CHAT, body, headers)
    return status, head, json.loads(data)


@pytest.fixture
def weak() -> Iterator[MockBackendThread]:
    with MockBackendThread(MockBackend("weak", ["qwen3-4b"], stream_delay_ms=0)) as thread:
        yield thread


# -- answers ------------------------------------------------------------------------------------


def test_plain_answer_names_backend_model_attempt_and_usage(weak: MockBackendThread) -> None:
    status, headers, answer = post_chat(weak.port, chat("hello there", "second"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-mock-backend"] == "weak"
    assert headers["x-mock-model"] == "qwen3-4b"
    assert headers["x-mock-attempt"] == "1"
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "qwen3-4b"
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"].startswith("[weak] ")
    assert answer["choices"][0]["finish_reason"] == "stop"
    prompt = math.ceil(len("hello there" + "second") / 4)
    completion = math.ceil(len(message["content"]) / 4)
    assert answer["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    # Deterministic: the same request gives the same usage.
    assert post_chat(weak.port, chat("hello there", "second"))[2]["usage"] == answer["usage"]

    # The model asked for is echoed (a rewrite is visible), and so is Envoy's attempt count.
    body = json.dumps({"model": "glm-5", "messages": [{"role": "user", "content": "x"}]}).encode()
    status, headers, answer = post_chat(weak.port, body, **{"x-envoy-attempt-count": "3"})
    assert (status, answer["model"], headers["x-mock-model"]) == (200, "glm-5", "glm-5")
    assert headers["x-mock-attempt"] == "3"
    # Without a model: the backend's own.
    status, headers, answer = post_chat(weak.port, b'{"messages": []}')
    assert (status, answer["model"], headers.get("x-mock-model")) == (200, "qwen3-4b", None)


def test_models_health_and_bad_requests(weak: MockBackendThread) -> None:
    status, headers, data = request(weak.port, "GET", "/v1/models")
    assert status == 200
    assert headers["x-mock-backend"] == "weak"
    assert [m["id"] for m in json.loads(data)["data"]] == ["qwen3-4b"]
    status, _, data = request(weak.port, "GET", "/healthz")
    assert (status, json.loads(data)["status"]) == (200, "ok")

    status, _, answer = post_chat(weak.port, b"{not json")
    assert (status, answer["error"]["type"]) == (400, "invalid_request_error")
    assert request(weak.port, "GET", CHAT)[0] == 405
    assert request(weak.port, "GET", "/nowhere")[0] == 404
    status, _, answer = post_chat(weak.port, chat("x"), **{"x-mock-fail": "banana"})
    assert status == 400
    assert "not a response spec" in answer["error"]["message"]
    # Everything but /healthz and /_mock/ is recorded.
    assert [r.path for r in weak.requests] == ["/v1/models", CHAT, CHAT, "/nowhere", CHAT]


async def test_strict_models_rejects_unknown_model() -> None:
    async with MockBackend("strong", ["glm-5"], strict_models=True) as backend:
        ok = await asyncio.to_thread(
            post_chat, backend.port, chat("x").replace(b"qwen3-4b", b"glm-5")
        )
        assert ok[0] == 200
        status, _, answer = await asyncio.to_thread(post_chat, backend.port, chat("x"))
        assert (status, answer["error"]["code"]) == (404, "model_not_found")


async def test_body_over_the_limit_gets_413() -> None:
    async with MockBackend("weak", ["qwen3-4b"], max_body_bytes=100) as backend:
        status, _, data = await asyncio.to_thread(
            request, backend.port, "POST", CHAT, chat("x" * 200)
        )
        assert status == 413
        assert json.loads(data)["error"]["type"] == "invalid_request_error"
        assert backend.requests == []


# -- streaming ----------------------------------------------------------------------------------


def read_sse(
    port: int, body: bytes, headers: dict[str, str]
) -> tuple[http.client.HTTPResponse, list[tuple[float, str]], float]:
    """(response, [(arrival time, data line)], request start): one line at a time, as it comes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        start = time.monotonic()
        conn.request("POST", CHAT, body=body, headers=headers)
        response = conn.getresponse()
        events: list[tuple[float, str]] = []
        for _ in range(200):  # bounded: a handful of events, each followed by a blank line
            line = response.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                events.append((time.monotonic(), line[6:].decode().strip()))
        return response, events, start
    finally:
        conn.close()


def test_sse_arrives_incrementally_with_usage_in_the_final_chunk(weak: MockBackendThread) -> None:
    body = chat("stream me", stream=True, stream_options={"include_usage": True})
    response, events, start = read_sse(weak.port, body, {"x-mock-stream-delay-ms": "100"})
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["x-mock-backend"] == "weak"

    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == 7  # role, 4 content pieces, finish, usage
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "qwen3-4b" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text.startswith("[weak] ")
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert all(c["usage"] is None for c in chunks[:-1])
    # The same usage as the plain answer to the same prompt.
    plain = post_chat(weak.port, chat("stream me"))[2]
    assert plain["choices"][0]["message"]["content"] == text
    assert chunks[-1]["usage"] == plain["usage"]

    # Incremental: the first event came at once, every later one about 100 ms after the last.
    times = [t for t, _ in events]
    assert times[0] - start < 0.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.05, gaps
    assert times[-1] - times[0] > 0.6


def test_sse_without_include_usage_has_no_usage(weak: MockBackendThread) -> None:
    body = chat("stream me", stream=True)
    response, events, _ = read_sse(weak.port, body, {"x-mock-stream-chunks": "2"})
    assert response.status == 200
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == 4  # role, 2 content pieces, finish
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert weak.requests[-1].stream is True


# -- failures -----------------------------------------------------------------------------------


def test_failure_headers(weak: MockBackendThread) -> None:
    status, headers, answer = post_chat(weak.port, chat("x"), **{"x-mock-fail": "429:2"})
    assert status == 429
    assert headers["retry-after"] == "2"
    assert headers["x-mock-backend"] == "weak"
    assert answer["error"]["type"] == "rate_limit_error"
    status, headers, _ = post_chat(weak.port, chat("x"), **{"x-mock-fail": "503"})
    assert (status, headers.get("retry-after")) == (503, None)

    # Aimed at one backend by name: the other serves.
    assert post_chat(weak.port, chat("x"), **{"x-mock-fail-strong": "503"})[0] == 200
    assert post_chat(weak.port, chat("x"), **{"x-mock-fail-weak": "503"})[0] == 503

    # Bounded by Envoy's attempt count: attempt 1 fails, the retry (attempt 2) is served.
    fail_once = {"x-mock-fail": "503", "x-mock-fail-attempts": "1"}
    assert post_chat(weak.port, chat("x"), **fail_once, **{"x-envoy-attempt-count": "1"})[0] == 503
    assert post_chat(weak.port, chat("x"), **fail_once, **{"x-envoy-attempt-count": "2"})[0] == 200

    # `reset`: the connection closes without an answer.
    with pytest.raises(ConnectionError):
        post_chat(weak.port, chat("x"), **{"x-mock-fail": "reset"})
    assert weak.requests[-1].status == 0


def test_scripted_503_then_200_via_control_endpoint(weak: MockBackendThread) -> None:
    script = json.dumps({"responses": ["503", "503", "200"]}).encode()
    status, _, data = request(weak.port, "POST", "/_mock/script", script)
    assert status == 200
    assert json.loads(data)["pending"] == ["503", "503", "200"]
    statuses = [post_chat(weak.port, chat("x"))[0] for _ in range(4)]
    assert statuses == [503, 503, 200, 200]  # then back to normal
    assert json.loads(request(weak.port, "GET", "/_mock/script")[2])["pending"] == []

    # A bare list works too; 429 with Retry-After.
    request(weak.port, "POST", "/_mock/script", b'["429:1", "200"]')
    status, headers, _ = post_chat(weak.port, chat("x"))
    assert (status, headers["retry-after"]) == (429, "1")
    assert post_chat(weak.port, chat("x"))[0] == 200

    # "Always 503" until reset.
    request(weak.port, "POST", "/_mock/script", b'{"always": "503"}')
    assert [post_chat(weak.port, chat("x"))[0] for _ in range(3)] == [503, 503, 503]
    status, _, data = request(weak.port, "POST", "/_mock/reset")
    assert (status, json.loads(data)["reset"]) == (200, True)
    assert post_chat(weak.port, chat("x"))[0] == 200
    assert len(weak.requests) == 1  # reset also forgot the recorded requests

    for bad in (b'["600"]', b'["abc"]', b'{"foo": 1}', b"nope", b'{"responses": "503"}'):
        status, _, data = request(weak.port, "POST", "/_mock/script", bad)
        assert status == 400, bad
        assert json.loads(data)["error"]["type"] == "invalid_request_error"


def test_script_from_python(weak: MockBackendThread) -> None:
    weak.script(["429:1", {"status": 503, "retry_after": 5}, 500], always="502")
    results = [post_chat(weak.port, chat("x")) for _ in range(5)]
    assert [r[0] for r in results] == [429, 503, 500, 502, 502]
    assert results[1][1]["retry-after"] == "5"
    weak.script()  # an empty script: normal again
    assert post_chat(weak.port, chat("x"))[0] == 200
    with pytest.raises(ValueError, match="status must be"):
        weak.script(["302"])


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("200", Fault()),
        ("503", Fault(status=503)),
        ("429:2", Fault(status=429, retry_after=2)),
        ("200@1500", Fault(delay_ms=1500)),
        ("503:1@20", Fault(status=503, retry_after=1, delay_ms=20)),
        ("reset", Fault(reset=True)),
        (404, Fault(status=404)),
        ({"status": 429, "retry_after": 1}, Fault(status=429, retry_after=1)),
        ({"finish_reason": "length", "ttfb_ms": 5}, Fault(finish_reason="length", ttfb_ms=5)),
        ({"content": "fixed", "delay_ms": 7}, Fault(content="fixed", delay_ms=7)),
        ({"refusal": "no"}, Fault(refusal="no")),
    ],
)
def test_fault_parse(spec: Any, fault: Fault) -> None:
    assert Fault.parse(spec) == fault
    assert Fault.parse(fault.spec()) == fault


def test_delays(weak: MockBackendThread) -> None:
    start = time.monotonic()
    status, _, _ = post_chat(weak.port, chat("x"), **{"x-mock-delay-ms": "300"})
    assert status == 200
    assert time.monotonic() - start >= 0.3
    weak.script(["503@300"])
    start = time.monotonic()
    assert post_chat(weak.port, chat("x"))[0] == 503
    assert time.monotonic() - start >= 0.3


# -- HTTP/1.1 details ---------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length response from a raw stream."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), TIMEOUT)
    return status, headers, body


def raw_request(body: bytes, *extra: str, port: int) -> bytes:
    lines = [
        f"POST {CHAT} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_chunked_request_body() -> None:
    async with MockBackend("weak", ["qwen3-4b"]) as backend:
        body = chat("chunked " * 50)
        reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
        try:
            head = (
                f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: application/json\r\n\r\n"
            )
            writer.write(head.encode())
            for piece in (body[:100], body[100:250], body[250:]):
                writer.write(f"{len(piece):X};ext=1\r\n".encode() + piece + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\nx-trailer: t\r\n\r\n")
            status, _, data = await read_response(reader)
            assert status == 200
            assert json.loads(data)["choices"][0]["message"]["content"].startswith("[weak]")
            record = backend.requests[-1]
            assert record.chunked is True
            assert record.content_length is None
            assert record.body_length == len(body)
            assert record.model == "qwen3-4b"
        finally:
            writer.close()
            await writer.wait_closed()


async def test_expect_continue_then_body() -> None:
    async with MockBackend("weak", ["qwen3-4b"]) as backend:
        body = chat("continue")
        reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
        try:
            request_bytes = raw_request(body, "Expect: 100-continue", port=backend.port)
            writer.write(request_bytes[: -len(body)])  # headers only
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(body)
            status, _, _ = await read_response(reader)
            assert status == 200
            assert backend.requests[-1].body_length == len(body)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_keep_alive_two_requests_on_one_connection() -> None:
    async with MockBackend("weak", ["qwen3-4b"]) as backend:
        reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
        try:
            first, second = chat("one"), chat("two", "three")
            writer.write(raw_request(first, port=backend.port))
            status1, headers1, _ = await read_response(reader)
            writer.write(raw_request(second, port=backend.port))
            status2, _, _ = await read_response(reader)
            assert (status1, status2) == (200, 200)
            assert headers1["connection"] == "keep-alive"
            # Pipelined: two requests in one write, two answers in order, then `close`.
            writer.write(
                raw_request(first, port=backend.port)
                + raw_request(second, "Connection: close", port=backend.port)
            )
            answers = [await read_response(reader) for _ in range(2)]
            assert [a[0] for a in answers] == [200, 200]
            assert answers[1][1]["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # server closed
        finally:
            writer.close()
            await writer.wait_closed()
        records = backend.requests
        assert len(records) == 4
        assert len({r.connection for r in records}) == 1
        assert [r.body_length for r in records] == [len(first), len(second)] * 2


async def test_large_answer_then_close_is_sent_whole() -> None:
    """A multi-megabyte answer on a `Connection: close` connection arrives whole to a late reader."""
    models = [f"model-{i:06d}" for i in range(40_000)]  # a /v1/models answer of ~3 MB
    async with MockBackend("weak", models) as backend:
        reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
        try:
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)  # a slow reader: the server's socket buffer fills up
            _, headers, data = await read_response(reader)
            assert int(headers["content-length"]) == len(data) > 2_000_000
            assert len(json.loads(data)["data"]) == len(models)
        finally:
            writer.close()
            await writer.wait_closed()


def test_recorded_requests(weak: MockBackendThread) -> None:
    body = chat("refactor this module")
    headers = {
        "X-Cascade-Tier": "strong",
        "X-Cascade-Reason": "keyword:refactor",
        "x-envoy-attempt-count": "2",
    }
    assert post_chat(weak.port, body, **headers)[0] == 200
    request(weak.port, "GET", "/healthz")  # not recorded
    record = weak.requests[-1]
    assert len(weak.requests) == 1
    assert (record.method, record.path, record.model, record.attempt) == (
        "POST",
        CHAT,
        "qwen3-4b",
        2,
    )
    assert record.headers["x-cascade-tier"] == "strong"
    assert record.headers["x-cascade-reason"] == "keyword:refactor"
    assert record.content_length == record.body_length == len(body)
    assert (record.status, record.stream, record.chunked) == (200, False, False)
    assert abs(record.time - time.time()) < 5

    status, _, data = request(weak.port, "GET", "/_mock/requests")
    assert status == 200
    listed = json.loads(data)
    assert listed["backend"] == "weak"
    assert listed["requests"] == [record.as_dict()]
    weak.clear_requests()
    assert weak.requests == []


# -- connection refused, and the CLI ------------------------------------------------------------


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_refuses_connections_and_start_binds_the_same_port(weak: MockBackendThread) -> None:
    port = weak.port
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as idle:
        stream = idle.makefile("rb")
        try:
            # A keep-alive connection that has been served once...
            idle.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert stream.readline().startswith(b"HTTP/1.1 200")
            length = 0
            for _ in range(20):
                line = stream.readline().strip()
                if not line:
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            assert json.loads(stream.read(length))["status"] == "ok"
            weak.stop_backend()
            assert refused(port)
            assert stream.read(1) == b""  # ...is closed by stop() too
        finally:
            stream.close()
    weak.start_backend()
    assert weak.port == port
    assert post_chat(port, chat("back"))[0] == 200


async def test_async_stop_refuses_connections() -> None:
    backend = MockBackend("strong", ["glm-5"])
    await backend.start()
    assert backend.running and backend.port > 0
    await backend.stop()
    await backend.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", backend.port)


def test_cli_starts_answers_and_exits_0_on_sigterm() -> None:
    args = ["mock-backend", "--name", "weak", "--model", "qwen3-4b", "--port", "0", "--quiet"]
    proc = subprocess.Popen([str(CASCADE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "no listening line within 15 s"
        line = proc.stdout.readline().decode()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        status, headers, answer = post_chat(int(match[1]), chat("hi"))
        assert (status, headers["x-mock-backend"], answer["model"]) == (200, "weak", "qwen3-4b")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- answer controls: finish_reason, content, refusal, logprobs, time to first byte ---------------


def stream_chunks(port: int, body: bytes, headers: dict[str, str]) -> list[dict[str, Any]]:
    response, events, _ = read_sse(port, body, headers)
    assert response.status == 200
    assert events[-1][1] == "[DONE]"
    return [json.loads(data) for _, data in events[:-1]]


def test_finish_reason_and_fixed_content_by_header_in_json_and_sse(weak: MockBackendThread) -> None:
    controls = {"x-mock-finish-reason": "length", "x-mock-content": "Paris is the capital."}
    status, _, answer = post_chat(weak.port, chat("capital of France?"), **controls)
    assert status == 200
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"] == {"role": "assistant", "content": "Paris is the capital."}
    assert answer["usage"]["completion_tokens"] == math.ceil(len("Paris is the capital.") / 4)

    body = chat("capital of France?", stream=True, stream_options={"include_usage": True})
    chunks = stream_chunks(weak.port, body, {**controls, "x-mock-stream-chunks": "3"})
    assert len(chunks) == 6  # role, 3 pieces, finish, usage
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == "Paris is the capital."
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["length"]
    assert chunks[-1]["usage"] == answer["usage"]

    # UTF-8 in the header; every finish_reason OpenAI knows is accepted, others are not.
    status, _, answer = post_chat(
        weak.port,
        chat("x"),
        **{"x-mock-content": "café"},  # http.client sends latin-1
    )
    assert answer["choices"][0]["message"]["content"] == "caf\ufffd"  # not UTF-8: replaced
    for reason in ("stop", "content_filter", "tool_calls", "function_call"):
        got = post_chat(weak.port, chat("x"), **{"x-mock-finish-reason": reason})[2]
        assert got["choices"][0]["finish_reason"] == reason
    status, _, answer = post_chat(weak.port, chat("x"), **{"x-mock-finish-reason": "banana"})
    assert (status, answer["error"]["type"]) == (400, "invalid_request_error")


def test_utf8_content_header_from_raw_bytes(weak: MockBackendThread) -> None:
    body = chat("x")
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode() + "x-mock-content: 東京 café\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", weak.port), timeout=TIMEOUT) as sock:
        sock.sendall(head + body)
        data = b""
        for _ in range(100):  # bounded: the answer is a few hundred bytes, then the server closes
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    answer = json.loads(data.partition(b"\r\n\r\n")[2])
    assert answer["choices"][0]["message"]["content"] == "東京 café"


def test_refusal_by_header_in_json_and_sse(weak: MockBackendThread) -> None:
    refusal = {"x-mock-refusal": "I can't help with that."}
    status, _, answer = post_chat(weak.port, chat("bad idea"), **refusal)
    assert status == 200
    message = answer["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    assert answer["choices"][0]["finish_reason"] == "stop"

    chunks = stream_chunks(weak.port, chat("bad idea", stream=True), refusal)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "refusal": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    assert all("content" not in d for d in deltas)
    assert "".join(d["refusal"] for d in deltas) == "I can't help with that."

    # Content and refusal exclude each other; a failure is not turned into an answer.
    both = {**refusal, "x-mock-content": "sure"}
    assert post_chat(weak.port, chat("x"), **both)[0] == 400
    assert post_chat(weak.port, chat("x"), **refusal, **{"x-mock-fail": "503"})[0] == 503


def check_logprobs(entries: list[dict[str, Any]], top: int) -> None:
    for entry in entries:
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] <= 0
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == top
        if top:
            assert alternatives[0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
            values = [a["logprob"] for a in alternatives]
            assert values == sorted(values, reverse=True)
            assert len(set(values)) == len(values)  # strictly lower alternatives
            assert len({a["token"] for a in alternatives}) == top
            assert all(a["bytes"] == list(a["token"].encode()) for a in alternatives)


def test_logprobs_are_openai_shaped_deterministic_and_equal_in_json_and_sse(
    weak: MockBackendThread,
) -> None:
    asked = {"logprobs": True, "top_logprobs": 3}
    status, _, answer = post_chat(weak.port, chat("how sure are you?", **asked))
    assert status == 200
    logprobs = answer["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    entries = logprobs["content"]
    assert "".join(e["token"] for e in entries) == answer["choices"][0]["message"]["content"]
    assert max(len(e["token"]) for e in entries) <= 4
    check_logprobs(entries, 3)
    # Deterministic per content: the same answer twice, another content other values.
    assert post_chat(weak.port, chat("how sure are you?", **asked))[2]["choices"][0][
        "logprobs"
    ] == (logprobs)
    other = post_chat(weak.port, chat("how sure are you?", **asked), **{"x-mock-content": "No."})
    assert [e["token"] for e in other[2]["choices"][0]["logprobs"]["content"]] == ["No."]

    # SSE: each content chunk carries the entries of its own tokens; together the JSON ones.
    chunks = stream_chunks(weak.port, chat("how sure are you?", stream=True, **asked), {})
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role event
    assert chunks[-1]["choices"][0]["logprobs"] is None  # the finish event
    streamed = []
    for chunk in chunks[1:-1]:
        choice = chunk["choices"][0]
        piece = choice["logprobs"]["content"]
        assert "".join(e["token"] for e in piece) == choice["delta"]["content"]
        streamed.extend(piece)
    assert streamed == entries

    # Without "logprobs": true there are none; top_logprobs defaults to 0; bad values get 400.
    assert post_chat(weak.port, chat("x", top_logprobs=3))[2]["choices"][0]["logprobs"] is None
    plain = post_chat(weak.port, chat("x", logprobs=True))[2]["choices"][0]["logprobs"]
    check_logprobs(plain["content"], 0)
    for bad in (21, -1, "3", True):
        status, _, answer = post_chat(weak.port, chat("x", logprobs=True, top_logprobs=bad))
        assert (status, answer["error"]["type"]) == (400, "invalid_request_error"), bad

    # A refusal's logprobs are under "refusal".
    refused = post_chat(weak.port, chat("x", **asked), **{"x-mock-refusal": "No way."})[2]
    assert refused["choices"][0]["logprobs"]["content"] is None
    assert "".join(e["token"] for e in refused["choices"][0]["logprobs"]["refusal"]) == "No way."


def test_ttfb_delays_the_headers_not_the_events(weak: MockBackendThread) -> None:
    # JSON: the whole answer waits.
    start = time.monotonic()
    assert post_chat(weak.port, chat("x"), **{"x-mock-ttfb-ms": "300"})[0] == 200
    assert time.monotonic() - start >= 0.3

    # SSE: the headers wait; then the events follow without the per-event delay.
    conn = http.client.HTTPConnection("127.0.0.1", weak.port, timeout=TIMEOUT)
    try:
        start = time.monotonic()
        headers = {"x-mock-ttfb-ms": "300", "x-mock-stream-delay-ms": "0"}
        conn.request("POST", CHAT, body=chat("x", stream=True), headers=headers)
        response = conn.getresponse()
        first_byte = time.monotonic() - start
        data = response.read()
        total = time.monotonic() - start
    finally:
        conn.close()
    assert first_byte >= 0.3
    assert data.endswith(b"data: [DONE]\n\n")
    assert total - first_byte < 0.25
    # It is only for answers: with a failure the request is not slowed by it.
    start = time.monotonic()
    assert (
        post_chat(weak.port, chat("x"), **{"x-mock-ttfb-ms": "5000", "x-mock-fail": "503"})[0]
        == 503
    )
    assert time.monotonic() - start < 2.5
    assert post_chat(weak.port, chat("x"), **{"x-mock-ttfb-ms": "soon"})[0] == 400


def test_answer_controls_by_script(weak: MockBackendThread) -> None:
    script = {
        "responses": [
            {"finish_reason": "content_filter", "content": "[filtered]"},
            {"refusal": "Scripted refusal."},
            {"ttfb_ms": 250},
            "200",
        ]
    }
    status, _, data = request(weak.port, "POST", "/_mock/script", json.dumps(script).encode())
    assert status == 200
    assert json.loads(data)["pending"] == [*script["responses"][:3], "200"]

    first = post_chat(weak.port, chat("x"))[2]["choices"][0]
    assert (first["finish_reason"], first["message"]["content"]) == ("content_filter", "[filtered]")
    second = post_chat(weak.port, chat("x"))[2]["choices"][0]["message"]
    assert (second["content"], second["refusal"]) == (None, "Scripted refusal.")
    start = time.monotonic()
    third = post_chat(weak.port, chat("x"))[2]["choices"][0]["message"]
    assert time.monotonic() - start >= 0.25
    assert third["content"].startswith("[weak] ")
    assert post_chat(weak.port, chat("x"))[2]["choices"][0]["finish_reason"] == "stop"

    # Headers win over the script entry's answer fields.
    weak.script([{"content": "scripted", "finish_reason": "length"}])
    got = post_chat(weak.port, chat("x"), **{"x-mock-content": "header"})[2]["choices"][0]
    assert (got["message"]["content"], got["finish_reason"]) == ("header", "length")
    # Also in a stream, and as `always`.
    weak.script(always={"content": "always the same", "finish_reason": "tool_calls"})
    chunks = stream_chunks(weak.port, chat("x", stream=True), {})
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "always the same"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    weak.reset()

    for bad in (
        [{"status": 503, "content": "x"}],
        [{"finish_reason": "banana"}],
        [{"content": "a", "refusal": "b"}],
        [{"content": 3}],
        [{"ttfb_ms": -1}],
    ):
        status, _, data = request(weak.port, "POST", "/_mock/script", json.dumps(bad).encode())
        assert status == 400, bad
        assert json.loads(data)["error"]["type"] == "invalid_request_error"


def test_the_openai_sdk_as_client(weak: MockBackendThread) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(
        base_url=f"{weak.url}/v1", api_key="mock", max_retries=0, timeout=TIMEOUT
    )
    try:
        messages = [{"role": "user", "content": "hello from the SDK"}]
        completion = client.chat.completions.create(
            model="qwen3-4b", messages=messages, logprobs=True, top_logprobs=2
        )
        assert completion.model == "qwen3-4b"
        choice = completion.choices[0]
        assert choice.message.content is not None and choice.message.content.startswith("[weak] ")
        assert choice.finish_reason == "stop"
        assert choice.logprobs is not None and choice.logprobs.content is not None
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == math.ceil(len("hello from the SDK") / 4)

        stream = client.chat.completions.create(
            model="qwen3-4b",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-finish-reason": "length", "x-mock-content": "cut short"},
        )
        pieces, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for delta_choice in chunk.choices:
                pieces.append(delta_choice.delta.content or "")
                finish = delta_choice.finish_reason or finish
        assert "".join(pieces) == "cut short"
        assert finish == "length"
        assert usage is not None and usage.completion_tokens == math.ceil(len("cut short") / 4)

        refused = client.chat.completions.create(
            model="qwen3-4b", messages=messages, extra_headers={"x-mock-refusal": "No."}
        )
        assert (refused.choices[0].message.content, refused.choices[0].message.refusal) == (
            None,
            "No.",
        )
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(
                model="qwen3-4b", messages=messages, extra_headers={"x-mock-fail": "429:1"}
            )
        assert caught.value.response.headers["retry-after"] == "1"
    finally:
        client.close()


async def test_stop_drops_busy_connections_at_once() -> None:
    """A request still waiting for its delay and a stream still running are cut by stop()."""
    backend = MockBackend("strong", ["glm-5"], stream_delay_ms=1_000)
    await backend.start()
    try:
        connections = [await asyncio.open_connection("127.0.0.1", backend.port) for _ in range(2)]
        (slow_reader, slow_writer), (stream_reader, stream_writer) = connections
        slow_writer.write(raw_request(chat("x"), "x-mock-delay-ms: 60000", port=backend.port))
        stream_writer.write(raw_request(chat("x", stream=True), port=backend.port))
        # The stream has begun once its headers arrived; the slow one once it was recorded.
        await asyncio.wait_for(stream_reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while len(backend.requests) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(backend.requests) == 2
        started = time.monotonic()
        await backend.stop()
        assert time.monotonic() - started < 2
        assert not backend.running
        for reader in (slow_reader, stream_reader):
            tail = b""
            with contextlib.suppress(ConnectionError):
                tail = await asyncio.wait_for(reader.read(), TIMEOUT)
            assert b"[DONE]" not in tail and b'chat.completion"' not in tail
        for _, writer in connections:
            writer.close()
    finally:
        await backend.stop()
