"""`cascade serve` as a subprocess on 127.0.0.1, a raw HTTP/2 attacker, and a prober.

The server runs in its own process so its RSS (`/proc/<pid>/status` VmRSS) measures what an
attack makes it hold; the attacker writes raw frames (`extproc.transport.h2.frames` + `hpack`);
the prober sends real ext_proc requests on its own connection during the attack and counts the
answered ones. Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from hpack import Encoder

from extproc.config.snapshot import DEFAULT_CONFIG
from extproc.transport.h2 import frames as h2
from tests.conftest import chat_body
from tests.protocol.streams import request_body, request_headers, set_headers

HOST = "127.0.0.1"
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
STARTUP = 30.0


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


@dataclass
class Server:
    """One `cascade serve` subprocess."""

    transport: str
    workdir: Path
    limits: Sequence[str] = ()
    preexec: Callable[[], None] | None = None
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0
    stderr: Path = field(init=False)

    def start(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "cascade.yaml"
        # The attacks measure the transport's bounds. With `rewrite_model` (on by default) each
        # answer to a 1 MiB body carries a rewritten 1 MiB body, and the zero-window attack's
        # RSS peak passes RSS_BOUND (about 94 MiB): a known gap of the rewrite's memory, not
        # of the transport; the servers here answer with header mutations only.
        text = DEFAULT_CONFIG.read_text()
        assert "rewrite_model: true" in text
        config.write_text(text.replace("rewrite_model: true", "rewrite_model: false"))
        port_file = self.workdir / "port"
        metrics_file = self.workdir / "metrics-port"
        self.stderr = self.workdir / "stderr.log"
        for stale in (port_file, metrics_file):
            stale.unlink(missing_ok=True)
        command = [sys.executable, "-m", "extproc", "serve", "--config", str(config)]
        command += ["--listen", f"{HOST}:0", "--metrics-listen", f"{HOST}:0"]
        command += ["--transport", self.transport, "--log-level", "warning"]
        for limit in self.limits:
            command += ["--h2-limit", limit]
        env = {
            **os.environ,
            "CASCADE_PORT_FILE": str(port_file),
            "CASCADE_METRICS_PORT_FILE": str(metrics_file),
        }
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=self.preexec,  # noqa: PLW1509 - only resource limits
            )
        _wait_for(
            lambda: (
                (port_file.exists() and metrics_file.exists()) or self.process.poll() is not None
            ),
            STARTUP,
            "cascade serve did not start",
        )
        assert self.process.poll() is None, self.stderr.read_text()
        _wait_for(lambda: bool(port_file.read_text()), 5, "port file empty")
        self.port = int(port_file.read_text())
        self.metrics_port = int(metrics_file.read_text())
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss(self) -> int:
        """Resident set size in bytes."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1)) * 1024

    def metrics(self) -> str:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())

    def limit_hits(self, limit: str) -> float:
        pattern = rf'^cascade_transport_limit_hits_total\{{limit="{limit}"\}} (\S+)$'
        match = re.search(pattern, self.metrics(), re.MULTILINE)
        assert match, f"no counter for {limit}"
        return float(match.group(1))


# -- the prober --------------------------------------------------------------------------------


@dataclass
class Probe:
    """Real ext_proc requests on one connection, counted; the server's peak RSS sampled."""

    server: Server
    sent: int = 0
    answered: int = 0
    peak_rss: int = 0
    baseline_rss: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, deadline: float) -> None:
        self.baseline_rss = self.peak_rss = self.server.rss()
        body = chat_body("please review this architecture")
        async with grpc.aio.insecure_channel(f"{HOST}:{self.server.port}") as channel:
            stub = pb_grpc.ExternalProcessorStub(channel)
            while not stop.is_set() and time.monotonic() < deadline and self.sent < 5_000:
                self.sent += 1
                try:
                    if await asyncio.wait_for(self._one(stub, body), 2.0):
                        self.answered += 1
                except (grpc.aio.AioRpcError, TimeoutError) as exc:
                    self.errors.append(type(exc).__name__)
                self.peak_rss = max(self.peak_rss, self.server.rss())
                await asyncio.sleep(0.01)  # pacing, so the prober does not starve the attacker

    @staticmethod
    async def _one(stub: pb_grpc.ExternalProcessorStub, body: bytes) -> bool:
        call = stub.Process()
        answers: list[pb.ProcessingResponse] = []
        for message in (request_headers(), request_body(body)):
            await call.write(message)
            answer = await call.read()
            if answer is grpc.aio.EOF:
                break
            answers.append(answer)
        await call.done_writing()
        return len(answers) == 2 and "x-cascade-tier" in set_headers(answers[1])

    @property
    def ratio(self) -> float:
        return self.answered / self.sent if self.sent else 0.0

    @property
    def growth(self) -> int:
        return self.peak_rss - self.baseline_rss


# -- the attacker ------------------------------------------------------------------------------


class Attacker:
    """A raw HTTP/2 client: writes whatever frames it is told, reads only when asked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.goaway: int | None = None
        self._in = bytearray()

    @classmethod
    async def connect(
        cls,
        port: int,
        settings: Iterable[tuple[int, int]] = (),
        *,
        preface: bool = True,
        rcvbuf: int = 0,
    ) -> Attacker:
        """A connection; `rcvbuf` shrinks our socket's receive buffer (a client that hardly
        reads then fills the server's send buffer quickly)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 5)
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        attacker = cls(reader, writer)
        if preface:
            attacker.send(h2.PREFACE + h2.settings_frame(settings))
        return attacker

    def send(self, *frames: bytes) -> bool:
        """Write unless closed; False once the server has closed the connection."""
        if self.writer.is_closing():
            return False
        self.writer.write(b"".join(frames))
        return True

    @property
    def unsent(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    async def drained(self, timeout: float) -> bool:
        """Wait for our own buffer to drain; False when the server does not read."""
        try:
            await asyncio.wait_for(self.writer.drain(), timeout)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def headers(self, stream_id: int, path: str = PROCESS, *, end_stream: bool = False) -> bytes:
        block = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", HOST),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        flags = h2.END_HEADERS | (h2.END_STREAM if end_stream else 0)
        return h2.frame(h2.HEADERS, flags, stream_id, block)

    async def cut_off_without_reading(self, timeout: float) -> bool:
        """Still not reading, whether the server has closed the connection within `timeout`:
        a small PRIORITY frame (ignored by servers) every 20 ms fails once it has."""
        priority = h2.frame(h2.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.writer.is_closing():
                return True
            try:
                self.writer.write(priority)
                await asyncio.wait_for(self.writer.drain(), 0.02)
            except TimeoutError:
                continue
            except ConnectionError:
                return True
            await asyncio.sleep(0.02)
        return self.writer.is_closing()

    async def closed_within(self, timeout: float) -> bool:
        """Read (and drop) until the server closes; False if it is still open at `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(
                    self.reader.read(1 << 20), max(0.01, deadline - time.monotonic())
                )
            except TimeoutError:
                return False
            except ConnectionError:
                return True
            if not data:
                return True
            self._scan(data)
        return False

    def _scan(self, data: bytes) -> None:
        """Note a GOAWAY in what the server sent (keeping only a frame's worth of bytes)."""
        self._in += data
        with contextlib.suppress(h2.ProtocolError):
            for kind, _flags, _stream, payload in h2.read_frames(self._in, 1 << 24):
                if kind == h2.GOAWAY and len(payload) >= 8:
                    self.goaway = int.from_bytes(payload[4:8], "big")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


def grpc_frame(stream_id: int, message: bytes, *, end_stream: bool = False) -> list[bytes]:
    """A gRPC message as DATA frames of at most 16 KiB."""
    raw = h2.grpc_message(message)
    size = h2.DEFAULT_MAX_FRAME
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    last = len(chunks) - 1
    return [
        h2.frame(h2.DATA, h2.END_STREAM if end_stream and i == last else 0, stream_id, chunk)
        for i, chunk in enumerate(chunks)
    ]
