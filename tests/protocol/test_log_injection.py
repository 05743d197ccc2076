"""`cascade serve --log-format json` as a process: text a client sends over the ext_proc API (a
request id with quotes and newlines, unparsable host metadata) is logged, and every line the
server writes to stderr is still one JSON object with only the server's own fields."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

from extproc.app.logs import CORE_KEYS
from extproc.app.run import TRANSPORTS
from extproc.core import headers
from tests.conftest import chat_body
from tests.protocol.streams import request_body, request_headers
from tests.protocol.test_upstream import host_metadata

CASCADE = Path(sys.executable).with_name("cascade")
FORGED = '{"time":"2026-01-01T00:00:00.000Z","level":"CRITICAL","logger":"x","message":"forged"}'
#: a request id that closes the JSON string, adds fields and starts a second record
REQUEST_ID = 'abc","level":"CRITICAL","injected":"1\n' + FORGED + "\r\n\x1b[31m"
#: host metadata that does not parse: the server logs (the start of) it as a warning
BAD_METADATA = 'tier: "x\n' + FORGED


@pytest.fixture(params=TRANSPORTS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(port, stderr file) of a running `cascade serve --log-format json`."""
    port_file, stderr_path = tmp_path / "port", tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                str(CASCADE),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--drain-delay",
                "0",
                "--grace",
                "2",
                "--log-format",
                "json",
                "--log-level",
                "info",
                "--transport",
                str(request.param),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "CASCADE_PORT_FILE": str(port_file)},
        )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield int(port_file.read_text()), stderr_path
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("no exit 15 s after SIGTERM; stderr:\n" + stderr_path.read_text())
        assert code == 0, stderr_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def upstream_attempt(request_id: str, metadata: str) -> list[pb.ProcessingRequest]:
    """What Envoy's upstream ext_proc filter sends for a strong request retried on weak."""
    message = request_headers(extra={"x-cascade-tier": "strong", "x-request-id": request_id})
    attributes = struct_pb2.Struct()
    attributes.update(
        {"upstream.address": "127.0.0.1:18081", "xds.upstream_host_metadata": metadata}
    )
    message.attributes["envoy.filters.http.ext_proc"].CopyFrom(attributes)
    return [message, request_body(chat_body("hello"))]


def test_client_text_cannot_forge_log_records(server: tuple[int, Path]) -> None:
    port, stderr_path = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        role = ((headers.ROLE_METADATA, headers.ROLE_UPSTREAM),)
        # The downstream role too: the request id passes the classifier as well.
        list(
            stub.Process(
                iter(
                    [
                        request_headers(extra={"x-request-id": REQUEST_ID}),
                        request_body(chat_body("x")),
                    ]
                ),
                timeout=10,
            )
        )
        fallback = upstream_attempt(REQUEST_ID, host_metadata("weak", "qwen3-4b"))
        assert len(list(stub.Process(iter(fallback), metadata=role, timeout=10))) == 2
        garbage = upstream_attempt(REQUEST_ID, BAD_METADATA)
        assert len(list(stub.Process(iter(garbage), metadata=role, timeout=10))) == 2
    # The records are written as the messages are handled; wait (bounded) until both are in.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = stderr_path.read_text(errors="strict")
        if "fallback strong" in text and "unparsable upstream host metadata" in text:
            break
        time.sleep(0.05)
    lines = stderr_path.read_text(errors="strict").split("\n")
    assert lines.pop() == ""  # the last record ends with its newline
    records = []
    for line in lines:
        assert line.isascii(), repr(line)
        records.append(json.loads(line))  # every line is one JSON object
    for rec in records:
        assert set(rec) == set(CORE_KEYS), rec
        assert rec["level"] in {"INFO", "WARNING"}, rec
    messages = [str(r["message"]) for r in records]
    # The attacker's text is in the log, whole, as the value of `message`.
    carrying = [m for m in messages if REQUEST_ID in m or BAD_METADATA in m]
    assert len(carrying) >= 2, messages
    assert any(m.startswith("fallback strong -> weak") and REQUEST_ID in m for m in carrying)
    assert "unparsable upstream host metadata: " + BAD_METADATA in messages
    assert "forged" not in messages
