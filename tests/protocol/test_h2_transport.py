"""The lean HTTP/2 gRPC transport (`extproc.transport.h2.server`) on 127.0.0.1, frame by frame.

A small HTTP/2 client written here from the `extproc.transport.h2.frames` builders and `hpack` drives a
real `H2Server` over a socket, so each test can say exactly which frames go out and which must
come back. The last tests check interoperability with a real grpc.aio client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

import grpc
import pytest
from hpack import Decoder, Encoder

from extproc.transport.h2 import frames as h2
from extproc.transport.h2.frames import GrpcError
from extproc.transport.h2.limits import H2Limits
from extproc.transport.h2.server import H2Server

HOST = "127.0.0.1"
#: every read of the test client gives up after this long, so a bug fails instead of hanging
TIMEOUT = 5.0
MAX_MESSAGE = 8 * 1024 * 1024

SERVICE = "/test.Echo"
ECHO = f"{SERVICE}/Stream"
ONCE = f"{SERVICE}/Once"
FAILING = f"{SERVICE}/Failing"
REVERSE = f"{SERVICE}/Reverse"
ASYNC_REVERSE = f"{SERVICE}/AsyncReverse"
DENIED = f"{SERVICE}/Denied"
CRASH = f"{SERVICE}/Crash"
LONG_ERROR = f"{SERVICE}/LongError"
ASYNC_CRASH = f"{SERVICE}/AsyncCrash"
ASYNC_DENIED = f"{SERVICE}/AsyncDenied"
BLOCKED = f"{SERVICE}/Blocked"
DENIED_MESSAGE = "no such thing: 100% ü\n"


# -- server side: sessions and unary methods -----------------------------------------------------


class EchoSession:
    """Answers each message with its bytes reversed; counts `close()` calls."""

    #: end the call after this many messages (None: when the client ends it)
    limit: int | None = None

    def __init__(self, metadata: dict[str, str]) -> None:
        self.metadata = metadata
        self.received: list[bytes] = []
        self.closes = 0
        self.closed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.limit is not None and len(self.received) >= self.limit

    def message(self, raw: bytes) -> bytes:
        self.received.append(raw)
        return raw[::-1]

    def close(self) -> None:
        self.closes += 1
        self.closed.set()


class OnceSession(EchoSession):
    limit = 1


class FailingSession(EchoSession):
    def message(self, raw: bytes) -> bytes:
        self.received.append(raw)
        raise RuntimeError("handler bug")


def reverse(raw: bytes, metadata: dict[str, str]) -> bytes:
    return raw[::-1]


async def async_reverse(raw: bytes, metadata: dict[str, str]) -> bytes:
    await asyncio.sleep(0)  # really suspends: the answer is written from a later callback
    return raw[::-1]


def denied(raw: bytes, metadata: dict[str, str]) -> bytes:
    raise GrpcError(h2.NOT_FOUND, DENIED_MESSAGE)


def crash(raw: bytes, metadata: dict[str, str]) -> bytes:
    raise ValueError("unary handler bug")


def long_error(raw: bytes, metadata: dict[str, str]) -> bytes:
    raise GrpcError(h2.INVALID_ARGUMENT, "x" * 20_000)


async def async_crash(raw: bytes, metadata: dict[str, str]) -> bytes:
    await asyncio.sleep(0)
    raise RuntimeError("async unary handler bug")


async def async_denied(raw: bytes, metadata: dict[str, str]) -> bytes:
    await asyncio.sleep(0)
    raise GrpcError(h2.NOT_FOUND, DENIED_MESSAGE)


@dataclass
class Blocked:
    """An async unary method that never answers; records that it started and was cancelled."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, raw: bytes, metadata: dict[str, str]) -> bytes:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return raw


# -- client side: a frame-level HTTP/2 client --------------------------------------------------


@dataclass(frozen=True)
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes


@dataclass
class Stream:
    """What the server sent on one stream."""

    kinds: list[int] = field(default_factory=list)
    #: each header block (response headers, trailers), decoded
    headers: list[dict[str, str]] = field(default_factory=list)
    data_sizes: list[int] = field(default_factory=list)
    buffer: bytearray = field(default_factory=bytearray)
    messages: list[bytes] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    @property
    def trailers(self) -> dict[str, str]:
        assert self.ended and self.headers
        return self.headers[-1]


class Client:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        self.encoder = Encoder()
        self.decoder = Decoder()
        self._in = bytearray()
        self._frames: deque[Frame] = deque()
        self.server_settings: dict[int, int] = {}
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int] | None = None
        self._pings = 0
        #: we sent the preface: the server's SETTINGS are ours to ACK
        self.handshaken = False

    @classmethod
    async def open(cls, port: int, max_frame: int = h2.DEFAULT_MAX_FRAME) -> Client:
        """A TCP connection; nothing sent yet."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), TIMEOUT)
        return cls(reader, writer, max_frame)

    @classmethod
    async def connect(cls, port: int, settings: Iterable[tuple[int, int]] = ()) -> Client:
        """Preface + our SETTINGS; the server's SETTINGS read (and ACKed)."""
        settings = list(settings)
        client = await cls.open(port, dict(settings).get(h2.MAX_FRAME_SIZE, h2.DEFAULT_MAX_FRAME))
        client.send(h2.PREFACE + h2.settings_frame(settings))
        client.handshaken = True
        first = await client.read_frame()
        assert first.kind == h2.SETTINGS and not first.flags & h2.ACK
        return client

    def send(self, *raw: bytes) -> None:
        self.writer.write(b"".join(raw))

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    # -- reading ---------------------------------------------------------------------------

    async def read_frame(self) -> Frame:
        """The next frame, whatever it is (a server SETTINGS is ACKed). EOFError at the end."""
        while not self._frames:
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT)
            except ConnectionError:
                data = b""
            if not data:
                raise EOFError(f"connection closed ({len(self._in)} bytes unparsed)")
            self._in += data
            # the server must respect the frame size we allow (else ProtocolError here)
            self._frames.extend(Frame(*f) for f in h2.read_frames(self._in, self.max_frame))
        found = self._frames.popleft()
        if found.kind == h2.SETTINGS and not found.flags & h2.ACK:
            self.server_settings.update(h2.parse_settings(found.payload))
            if self.handshaken:
                self.send(h2.frame(h2.SETTINGS, h2.ACK, 0))
        return found

    def stream(self, stream_id: int) -> Stream:
        return self.streams.setdefault(stream_id, Stream())

    async def pump(self) -> Frame:
        """Read one frame and record it in its stream's state."""
        found = await self.read_frame()
        if found.stream == 0:
            if found.kind == h2.GOAWAY:
                self.goaway = (
                    int.from_bytes(found.payload[:4], "big"),
                    int.from_bytes(found.payload[4:8], "big"),
                )
            return found
        stream = self.stream(found.stream)
        assert not stream.ended, f"frame {found} after the end of stream {found.stream}"
        stream.kinds.append(found.kind)
        if found.kind == h2.DATA:
            stream.data_sizes.append(len(found.payload))
            stream.buffer += found.payload
            stream.messages += h2.read_grpc_messages(stream.buffer, MAX_MESSAGE)
            stream.ended = bool(found.flags & h2.END_STREAM)
        elif found.kind == h2.HEADERS:
            # the server sends whole header blocks, never CONTINUATION
            assert found.flags & h2.END_HEADERS
            fields = self.decoder.decode(found.payload, raw=True)
            stream.headers.append({name.decode(): value.decode() for name, value in fields})
            stream.ended = bool(found.flags & h2.END_STREAM)
        elif found.kind == h2.RST_STREAM:
            stream.reset = h2.parse_u32(found.payload, "RST_STREAM")
            stream.ended = True
        return found

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.pump()

    async def finish(self, stream_id: int) -> Stream:
        """Read until the server has ended the stream."""
        stream = self.stream(stream_id)
        await self.until(lambda: stream.ended)
        return stream

    async def sync(self) -> list[Frame]:
        """Round-trip a PING: the frames the server wrote before answering it.

        The server handles frames in order and writes what it can at once, so whatever it could
        send by then has arrived when the PING ACK does.
        """
        self._pings += 1
        payload = self._pings.to_bytes(8, "big")
        self.send(h2.frame(h2.PING, 0, 0, payload))
        seen: list[Frame] = []
        while True:
            found = await self.pump()
            if found.kind == h2.PING and found.flags & h2.ACK and found.payload == payload:
                return seen
            seen.append(found)

    async def until_closed(self) -> list[Frame]:
        """Every frame until the server closes the connection."""
        seen: list[Frame] = []
        with contextlib.suppress(EOFError):
            while True:
                seen.append(await self.pump())
        return seen

    # -- writing ---------------------------------------------------------------------------

    def block(self, path: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"{HOST}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *extra,
            ]
        )

    def headers(
        self,
        stream_id: int,
        path: str,
        *,
        end_stream: bool = False,
        extra: Iterable[tuple[str, str]] = (),
    ) -> bytes:
        flags = h2.END_HEADERS | (h2.END_STREAM if end_stream else 0)
        return h2.frame(h2.HEADERS, flags, stream_id, self.block(path, extra))


def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    return h2.frame(h2.DATA, h2.END_STREAM if end_stream else 0, stream_id, payload)


def message(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    return data(stream_id, h2.grpc_message(payload), end_stream=end_stream)


def split_data(stream_id: int, raw: bytes, size: int, *, end_stream: bool = False) -> bytes:
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    return b"".join(
        data(stream_id, chunk, end_stream=end_stream and i == len(chunks) - 1)
        for i, chunk in enumerate(chunks)
    )


def on_stream(frames: list[Frame], stream_id: int) -> list[Frame]:
    return [f for f in frames if f.stream == stream_id]


RESPONSE_HEADERS = {":status": "200", "content-type": "application/grpc"}


# -- fixture -----------------------------------------------------------------------------------


@dataclass
class Harness:
    server: H2Server
    port: int
    sessions: list[EchoSession]
    blocked: Blocked
    clients: list[Client] = field(default_factory=list)

    async def client(self, settings: Iterable[tuple[int, int]] = ()) -> Client:
        client = await Client.connect(self.port, settings)
        self.clients.append(client)
        return client


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    sessions: list[EchoSession] = []

    def opener(kind: type[EchoSession]) -> Callable[[dict[str, str]], EchoSession]:
        def open_session(metadata: dict[str, str]) -> EchoSession:
            session = kind(metadata)
            sessions.append(session)
            return session

        return open_session

    blocked = Blocked()
    unary: dict[str, Callable[[bytes, dict[str, str]], bytes | Awaitable[bytes]]] = {
        REVERSE: reverse,
        ASYNC_REVERSE: async_reverse,
        DENIED: denied,
        CRASH: crash,
        LONG_ERROR: long_error,
        ASYNC_CRASH: async_crash,
        ASYNC_DENIED: async_denied,
        BLOCKED: blocked,
    }
    server = H2Server(
        {ECHO: opener(EchoSession), ONCE: opener(OnceSession), FAILING: opener(FailingSession)},
        unary,
        MAX_MESSAGE,
    )
    port = await server.start(HOST, 0)
    instance = Harness(server, port, sessions, blocked)
    yield instance
    for client in instance.clients:
        await client.aclose()
    await asyncio.wait_for(server.stop(1.0), TIMEOUT)


LimitedServer = Callable[[H2Limits], Awaitable[Harness]]


@pytest.fixture
async def limited() -> AsyncIterator[LimitedServer]:
    """Servers with the given limits (echo methods only), stopped after the test."""
    harnesses: list[Harness] = []

    async def start(limits: H2Limits) -> Harness:
        sessions: list[EchoSession] = []

        def opener(kind: type[EchoSession]) -> Callable[[dict[str, str]], EchoSession]:
            def open_session(metadata: dict[str, str]) -> EchoSession:
                session = kind(metadata)
                sessions.append(session)
                return session

            return open_session

        server = H2Server(
            {ECHO: opener(EchoSession), ONCE: opener(OnceSession)},
            {REVERSE: reverse, LONG_ERROR: long_error},
            limits=limits,
        )
        port = await server.start(HOST, 0)
        harness = Harness(server, port, sessions, Blocked())
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        for client in harness.clients:
            await client.aclose()
        await asyncio.wait_for(harness.server.stop(1.0), TIMEOUT)


# -- stream calls --------------------------------------------------------------------------------


async def test_stream_call_with_two_messages(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO, extra=[("x-test", "yes")]), message(1, b"abc"))
    stream = client.stream(1)
    await client.until(lambda: len(stream.messages) == 1)
    assert stream.headers == [RESPONSE_HEADERS]
    assert stream.messages == [b"cba"]

    client.send(message(1, b"hello"))
    await client.until(lambda: len(stream.messages) == 2)
    assert not stream.ended  # the call lasts until the client ends its side

    client.send(data(1, b"", end_stream=True))
    await client.finish(1)
    assert stream.kinds == [h2.HEADERS, h2.DATA, h2.DATA, h2.HEADERS]
    assert stream.messages == [b"cba", b"olleh"]
    assert stream.trailers == {"grpc-status": "0"}
    assert stream.buffer == b""

    [session] = harness.sessions
    assert session.received == [b"abc", b"hello"]
    assert session.metadata[":path"] == ECHO
    assert session.metadata["x-test"] == "yes"
    await client.sync()
    assert session.closes == 1
    assert harness.server.in_flight == 0


async def test_client_reset_closes_the_session_once(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), message(1, b"abc"))
    await client.until(lambda: len(client.stream(1).messages) == 1)
    [session] = harness.sessions
    assert session.closes == 0
    assert harness.server.in_flight == 1

    client.send(h2.rst_stream_frame(1, h2.CANCEL))
    assert on_stream(await client.sync(), 1) == []
    assert session.closes == 1
    assert harness.server.in_flight == 0

    # late DATA on the reset stream is ignored, and nothing closes twice
    client.send(message(1, b"late", end_stream=True))
    assert on_stream(await client.sync(), 1) == []
    assert session.received == [b"abc"]
    assert session.closes == 1


async def test_connection_drop_closes_the_session_once(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), message(1, b"abc"))
    await client.until(lambda: len(client.stream(1).messages) == 1)
    [session] = harness.sessions

    await client.aclose()
    await asyncio.wait_for(session.closed.wait(), TIMEOUT)
    assert session.closes == 1
    assert harness.server.in_flight == 0
    assert harness.server.connections == set()
    await asyncio.wait_for(harness.server.stop(1.0), TIMEOUT)
    assert session.closes == 1


@pytest.mark.parametrize("then", ["end_stream", "reset", "drop"])
async def test_session_that_ends_early_is_closed_once(harness: Harness, then: str) -> None:
    client = await harness.client()
    client.send(client.headers(1, ONCE), message(1, b"first"))
    stream = await client.finish(1)  # ended by the server, before the client's END_STREAM
    assert stream.kinds == [h2.HEADERS, h2.DATA, h2.HEADERS]
    assert stream.messages == [b"tsrif"]
    assert stream.trailers == {"grpc-status": "0"}
    [session] = harness.sessions
    assert session.closes == 1
    assert harness.server.in_flight == 0

    # however the client's side then ends, nothing is answered and nothing closes twice
    if then == "end_stream":
        client.send(message(1, b"second", end_stream=True))
        assert on_stream(await client.sync(), 1) == []
        assert session.received == [b"first"]
    elif then == "reset":
        client.send(h2.rst_stream_frame(1, h2.NO_ERROR))
        assert on_stream(await client.sync(), 1) == []
    else:
        await client.aclose()
        await asyncio.wait_for(harness.server.stop(1.0), TIMEOUT)
    assert session.closes == 1
    assert all(connection.idle for connection in harness.server.connections)


async def test_unknown_method_is_unimplemented_trailers_only(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, "/nope.Service/Missing"))
    stream = await client.finish(1)
    # trailers-only: one HEADERS frame with END_STREAM, status and grpc-status together
    assert stream.kinds == [h2.HEADERS]
    [block] = stream.headers
    assert block[":status"] == "200"
    assert block["content-type"] == "application/grpc"
    assert block["grpc-status"] == str(h2.UNIMPLEMENTED)
    # a fixed message: the client's path is not echoed back (issue #11: 6 KB trailers each)
    assert unquote(block["grpc-message"]) == "method not implemented"

    client.send(message(1, b"ignored", end_stream=True))
    assert on_stream(await client.sync(), 1) == []
    assert harness.sessions == []


async def test_handler_exception_is_internal_and_the_connection_stays_usable(
    harness: Harness,
) -> None:
    client = await harness.client()
    client.send(client.headers(1, FAILING), message(1, b"boom"))
    failed = await client.finish(1)
    assert failed.kinds == [h2.HEADERS]
    assert failed.headers[0]["grpc-status"] == str(h2.INTERNAL)
    assert failed.messages == []
    [session] = harness.sessions
    assert session.closes == 1
    assert harness.server.in_flight == 0

    client.send(client.headers(3, ECHO), message(3, b"next", end_stream=True))
    ok = await client.finish(3)
    assert ok.messages == [b"txen"]
    assert ok.trailers == {"grpc-status": "0"}
    assert client.goaway is None


async def test_stream_opened_and_ended_without_messages(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO, end_stream=True))
    stream = await client.finish(1)
    assert stream.kinds == [h2.HEADERS]
    assert stream.headers == [{**RESPONSE_HEADERS, "grpc-status": "0"}]
    assert harness.sessions[0].closes == 1


# -- framing variants ----------------------------------------------------------------------


async def test_header_block_split_over_continuation(harness: Harness) -> None:
    client = await harness.client()
    block = client.block(ECHO, extra=[("x-long", "v" * 200)])
    cuts = (0, 7, 50, len(block))
    parts = [block[a:b] for a, b in itertools.pairwise(cuts)]
    client.send(
        h2.frame(h2.HEADERS, 0, 1, parts[0]),
        h2.frame(h2.CONTINUATION, 0, 1, parts[1]),
        h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, parts[2]),
        message(1, b"continued", end_stream=True),
    )
    stream = await client.finish(1)
    assert stream.messages == [b"deunitnoc"]
    assert stream.trailers == {"grpc-status": "0"}
    assert harness.sessions[0].metadata["x-long"] == "v" * 200


async def test_end_stream_on_a_continued_header_block(harness: Harness) -> None:
    client = await harness.client()
    block = client.block(ECHO)
    client.send(
        h2.frame(h2.HEADERS, h2.END_STREAM, 1, block[:5]),
        h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[5:]),
    )
    stream = await client.finish(1)
    assert stream.headers == [{**RESPONSE_HEADERS, "grpc-status": "0"}]


async def test_interrupted_header_block_is_a_connection_error(harness: Harness) -> None:
    client = await harness.client()
    block = client.block(ECHO)
    client.send(
        h2.frame(h2.HEADERS, 0, 1, block[:5]),
        h2.frame(h2.PING, 0, 0, b"12345678"),
    )
    await client.until_closed()
    assert client.goaway == (0, h2.PROTOCOL_ERROR)


async def test_padded_headers_and_data(harness: Harness) -> None:
    client = await harness.client()
    block = client.block(ECHO)
    priority = b"\x00\x00\x00\x00\x10"
    headers = bytes([4]) + priority + block + b"\x00" * 4
    body = h2.grpc_message(b"padded")
    client.send(
        h2.frame(h2.HEADERS, h2.END_HEADERS | h2.PADDED | h2.PRIORITY_FLAG, 1, headers),
        h2.frame(h2.DATA, h2.PADDED, 1, bytes([10]) + body + b"\x00" * 10),
        h2.frame(h2.DATA, h2.PADDED | h2.END_STREAM, 1, b"\x00"),  # zero padding, no data
    )
    stream = await client.finish(1)
    assert stream.messages == [b"deddap"]
    assert stream.trailers == {"grpc-status": "0"}


async def test_padding_longer_than_the_data_frame_is_a_connection_error(
    harness: Harness,
) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), h2.frame(h2.DATA, h2.PADDED, 1, b"\x09abc"))
    await client.until_closed()
    assert client.goaway == (1, h2.PROTOCOL_ERROR)
    await asyncio.wait_for(harness.sessions[0].closed.wait(), TIMEOUT)
    assert harness.sessions[0].closes == 1


async def test_message_split_across_data_frames(harness: Harness) -> None:
    client = await harness.client()
    raw = h2.grpc_message(b"a message in pieces")
    client.send(client.headers(1, ECHO), split_data(1, raw[:-1], 3))
    # nothing is answered before the message is complete
    assert on_stream(await client.sync(), 1) == []
    assert harness.sessions[0].received == []

    client.send(data(1, raw[-1:], end_stream=True))
    stream = await client.finish(1)
    assert stream.messages == [b"seceip ni egassem a"]
    assert harness.sessions[0].received == [b"a message in pieces"]


async def test_several_messages_in_one_data_frame(harness: Harness) -> None:
    client = await harness.client()
    raw = b"".join(h2.grpc_message(m) for m in (b"one", b"two", b"three"))
    client.send(client.headers(1, ECHO), data(1, raw, end_stream=True))
    stream = await client.finish(1)
    assert stream.messages == [b"eno", b"owt", b"eerht"]


async def test_ping_is_acknowledged_with_its_payload(harness: Harness) -> None:
    client = await harness.client()
    client.send(h2.frame(h2.PING, h2.ACK, 0, b"ackedack"))  # an ACK is not answered
    client.send(h2.frame(h2.PING, 0, 0, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"))
    answer = await client.pump()
    while answer.kind != h2.PING:  # skip the server's SETTINGS ACK and connection window
        assert answer.kind in (h2.SETTINGS, h2.WINDOW_UPDATE)
        answer = await client.pump()
    assert answer == Frame(h2.PING, h2.ACK, 0, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")
    assert [f for f in await client.sync() if f.kind == h2.PING] == []


async def test_server_settings(harness: Harness) -> None:
    client = await harness.client()
    assert client.server_settings[h2.ENABLE_PUSH] == 0
    limits = harness.server.limits
    assert client.server_settings[h2.INITIAL_WINDOW_SIZE] == limits.stream_window == 1 << 20
    assert client.server_settings[h2.MAX_CONCURRENT_STREAMS] == limits.max_concurrent_streams
    assert client.server_settings[h2.MAX_HEADER_LIST_SIZE] == limits.max_header_block
    frames = await client.sync()
    # our SETTINGS are acknowledged
    assert Frame(h2.SETTINGS, h2.ACK, 0, b"") in frames


# -- flow control --------------------------------------------------------------------------


async def test_stream_window_limits_what_the_server_sends(harness: Harness) -> None:
    client = await harness.client([(h2.INITIAL_WINDOW_SIZE, 10)])
    payload = bytes(range(20))
    client.send(client.headers(1, ECHO), message(1, payload, end_stream=True))
    stream = client.stream(1)
    await client.until(lambda: sum(stream.data_sizes) >= 10)
    await client.sync()
    assert sum(stream.data_sizes) == 10
    assert not stream.ended  # the trailers wait behind the data

    client.send(h2.window_update_frame(1, 7))
    await client.sync()
    assert sum(stream.data_sizes) == 17
    assert not stream.ended

    client.send(h2.window_update_frame(1, 100))
    await client.finish(1)
    assert sum(stream.data_sizes) == 25
    assert stream.kinds[0] == h2.HEADERS and stream.kinds[-1] == h2.HEADERS
    assert set(stream.kinds[1:-1]) == {h2.DATA}
    assert stream.messages == [payload[::-1]]
    assert stream.trailers == {"grpc-status": "0"}


async def test_window_shrunk_by_settings_mid_call(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), message(1, b"x" * 10))
    await client.until(lambda: len(client.stream(1).messages) == 1)  # 15 of 65535 used
    client.send(h2.settings_frame([(h2.INITIAL_WINDOW_SIZE, 20)]))  # window now 20 - 15 = 5
    client.send(message(1, b"y" * 10, end_stream=True))
    await client.sync()
    stream = client.stream(1)
    assert stream.data_sizes == [15, 5]
    client.send(h2.window_update_frame(1, 10))
    await client.finish(1)
    assert stream.data_sizes == [15, 5, 10]
    assert stream.messages == [b"x" * 10, b"y" * 10]


async def test_connection_window_limits_what_the_server_sends(harness: Harness) -> None:
    client = await harness.client([(h2.INITIAL_WINDOW_SIZE, 1 << 20)])
    payload = bytes(range(256)) * 280  # 71 680 bytes: more than the 65 535 connection window
    raw = h2.grpc_message(payload)
    client.send(client.headers(1, ECHO), split_data(1, raw, h2.DEFAULT_MAX_FRAME, end_stream=True))
    stream = client.stream(1)
    await client.until(lambda: sum(stream.data_sizes) >= h2.DEFAULT_WINDOW)
    await client.sync()
    assert sum(stream.data_sizes) == h2.DEFAULT_WINDOW
    assert max(stream.data_sizes) <= h2.DEFAULT_MAX_FRAME  # our (default) max frame size
    assert not stream.ended

    client.send(h2.window_update_frame(0, len(raw) - h2.DEFAULT_WINDOW))
    await client.finish(1)
    assert sum(stream.data_sizes) == len(raw)
    assert stream.messages == [payload[::-1]]
    assert stream.trailers == {"grpc-status": "0"}


async def test_receive_windows_are_topped_up(limited: LimitedServer) -> None:
    # smallest windows allowed: 65 535 per stream, 131 070 for the connection
    harness = await limited(H2Limits(stream_window=65_535, connection_window=131_070))
    client = await harness.client([(h2.INITIAL_WINDOW_SIZE, 1 << 20)])
    client.send(h2.window_update_frame(0, 1 << 20))  # room for the echoes
    await client.sync()  # past the server's opening connection WINDOW_UPDATE
    chunk = message(1, b"x" * 15_995)  # a DATA frame of 16 000 bytes, one whole message

    async def updates(*frames: bytes) -> list[Frame]:
        client.send(*frames)
        return [f for f in await client.sync() if f.kind == h2.WINDOW_UPDATE]

    # 32 000 of 65 535 used: more than half left of both windows
    assert await updates(client.headers(1, ECHO), chunk, chunk) == []
    # 48 000 used: the stream is topped up, the connection (131 070) not yet
    assert await updates(chunk) == [Frame(h2.WINDOW_UPDATE, 0, 1, (48_000).to_bytes(4, "big"))]
    # 80 000 used on the connection: topped up; 32 000 on the stream since its update
    assert await updates(chunk, chunk) == [
        Frame(h2.WINDOW_UPDATE, 0, 0, (80_000).to_bytes(4, "big"))
    ]
    client.send(data(1, b"", end_stream=True))
    stream = await client.finish(1)
    assert len(stream.messages) == 5


async def test_a_message_larger_than_the_stream_window_gets_its_size(
    limited: LimitedServer,
) -> None:
    harness = await limited(H2Limits(stream_window=65_535, connection_window=1 << 20))
    client = await harness.client([(h2.INITIAL_WINDOW_SIZE, 1 << 20)])
    client.send(h2.window_update_frame(0, 1 << 20))  # room for the echo
    await client.sync()
    payload = bytes(range(256)) * 1000  # 256 000 bytes: four stream windows
    raw = h2.grpc_message(payload)
    client.send(client.headers(1, ECHO), data(1, raw[:16_384]))
    frames = await client.sync()
    [update] = [f for f in frames if f.kind == h2.WINDOW_UPDATE and f.stream == 1]
    granted = 65_535 - 16_384 + int.from_bytes(update.payload, "big")
    assert granted == len(raw) - 16_384  # exactly the rest of the message
    client.send(split_data(1, raw[16_384:], h2.DEFAULT_MAX_FRAME, end_stream=True))
    stream = await client.finish(1)
    assert stream.messages == [payload[::-1]]


async def test_data_over_the_stream_window_is_a_flow_control_error(
    limited: LimitedServer,
) -> None:
    harness = await limited(H2Limits(stream_window=65_535))
    client = await harness.client()
    # the call ends after one message, so the stream's window is not topped up any more
    client.send(client.headers(1, ONCE), message(1, b"a"), split_data(1, b"y" * 70_000, 14_000))
    codes = []
    while not codes:
        found = await client.read_frame()
        if found.kind == h2.RST_STREAM and found.stream == 1:
            codes.append(h2.parse_u32(found.payload, "RST_STREAM"))
    assert codes == [h2.FLOW_CONTROL_ERROR]
    assert harness.server.stats.limit_hits["flow_control"] == 1


async def test_zero_stream_window_update_resets_the_stream(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), h2.window_update_frame(1, 0))
    stream = await client.finish(1)
    assert stream.reset == h2.PROTOCOL_ERROR
    assert harness.sessions[0].closes == 1


async def test_stream_window_overflow_is_a_flow_control_error(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), h2.window_update_frame(1, h2.MAX_WINDOW))
    stream = await client.finish(1)
    assert stream.reset == h2.FLOW_CONTROL_ERROR


# -- connection errors and shutdown ----------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # full length, wrong ending
        b"HELLO",  # shorter than the preface: refused without waiting for more
    ],
)
async def test_garbage_preface_gets_goaway_and_close(harness: Harness, garbage: bytes) -> None:
    client = await Client.open(harness.port)
    harness.clients.append(client)
    client.send(garbage)
    frames = await client.until_closed()
    assert frames[-1].kind == h2.GOAWAY
    assert client.goaway == (0, h2.PROTOCOL_ERROR)


async def test_stop_sends_goaway_drains_open_call_then_refuses(harness: Harness) -> None:
    idle = await harness.client()
    await idle.sync()  # the server has this connection
    client = await harness.client()
    client.send(client.headers(1, ECHO), message(1, b"before"))
    stream = client.stream(1)
    await client.until(lambda: len(stream.messages) == 1)

    stopping = asyncio.create_task(harness.server.stop(TIMEOUT))
    await client.until(lambda: client.goaway is not None)
    assert client.goaway == (1, h2.NO_ERROR)
    # a connection without calls is closed at once, while the open call still runs
    await idle.until_closed()
    assert idle.goaway == (0, h2.NO_ERROR)
    assert not stopping.done()
    with pytest.raises(OSError):  # no longer accepting connections
        await asyncio.wait_for(asyncio.open_connection(HOST, harness.port), TIMEOUT)

    # a new stream on the draining connection is refused; the open one still gets answers
    client.send(client.headers(3, ECHO), message(1, b"after", end_stream=True))
    refused = await client.finish(3)
    assert refused.reset == h2.REFUSED_STREAM
    await client.finish(1)
    assert stream.messages == [b"erofeb", b"retfa"]
    assert stream.trailers == {"grpc-status": "0"}

    await client.until_closed()  # the drained connection is closed
    await asyncio.wait_for(stopping, TIMEOUT)
    assert [s.closes for s in harness.sessions] == [1]


async def test_stop_closes_calls_still_open_after_grace(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), message(1, b"open"))
    await client.until(lambda: len(client.stream(1).messages) == 1)
    await asyncio.wait_for(harness.server.stop(0.05), TIMEOUT)
    await asyncio.wait_for(harness.sessions[0].closed.wait(), TIMEOUT)
    await client.until_closed()
    assert harness.sessions[0].closes == 1


# -- unary calls ---------------------------------------------------------------------------


async def test_sync_unary(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, REVERSE), message(1, b"unary", end_stream=True))
    stream = await client.finish(1)
    assert stream.kinds == [h2.HEADERS, h2.DATA, h2.HEADERS]
    assert stream.headers[0] == RESPONSE_HEADERS
    assert stream.messages == [b"yranu"]
    assert stream.trailers == {"grpc-status": "0"}


async def test_async_unary(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ASYNC_REVERSE), message(1, b"later"))
    client.send(data(1, b"", end_stream=True))
    stream = await client.finish(1)
    assert stream.headers[0] == RESPONSE_HEADERS
    assert stream.messages == [b"retal"]
    assert stream.trailers == {"grpc-status": "0"}


async def test_unary_without_a_message_is_invalid(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, REVERSE, end_stream=True))
    client.send(
        client.headers(3, REVERSE),
        data(3, h2.grpc_message(b"one") + h2.grpc_message(b"two"), end_stream=True),
    )
    for stream_id in (1, 3):
        stream = await client.finish(stream_id)
        assert stream.kinds == [h2.HEADERS]
        assert stream.headers[0]["grpc-status"] == str(h2.INVALID_ARGUMENT)


async def test_unary_grpc_error_status_and_percent_encoded_message(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, DENIED), message(1, b"x", end_stream=True))
    stream = await client.finish(1)
    [block] = stream.headers
    assert block["grpc-status"] == str(h2.NOT_FOUND)
    assert block["grpc-message"] == "no such thing: 100%25 %C3%BC%0A"
    assert unquote(block["grpc-message"]) == DENIED_MESSAGE


@pytest.mark.parametrize(
    ("path", "status"), [(ASYNC_CRASH, h2.INTERNAL), (ASYNC_DENIED, h2.NOT_FOUND)]
)
async def test_async_unary_errors_end_the_call_only(
    harness: Harness, path: str, status: int
) -> None:
    client = await harness.client()
    client.send(client.headers(1, path), message(1, b"x", end_stream=True))
    stream = await client.finish(1)
    assert stream.kinds == [h2.HEADERS]
    assert stream.headers[0]["grpc-status"] == str(status)
    client.send(client.headers(3, ASYNC_REVERSE), message(3, b"ok", end_stream=True))
    assert (await client.finish(3)).messages == [b"ko"]


async def test_client_reset_cancels_a_pending_async_unary(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, BLOCKED), message(1, b"x", end_stream=True))
    await asyncio.wait_for(harness.blocked.started.wait(), TIMEOUT)
    client.send(h2.rst_stream_frame(1, h2.CANCEL))
    await asyncio.wait_for(harness.blocked.cancelled.wait(), TIMEOUT)
    assert on_stream(await client.sync(), 1) == []  # nothing is sent on a reset stream
    assert all(connection.idle for connection in harness.server.connections)


async def test_message_over_the_limit_is_resource_exhausted(harness: Harness) -> None:
    client = await harness.client()
    prefix = (MAX_MESSAGE + 1).to_bytes(5, "big")  # uncompressed, one byte too long
    client.send(client.headers(1, ECHO), data(1, prefix))
    stream = await client.finish(1)
    assert stream.headers[0]["grpc-status"] == str(h2.RESOURCE_EXHAUSTED)
    assert harness.sessions[0].received == []
    assert harness.sessions[0].closes == 1


async def test_compressed_message_is_unimplemented(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, ECHO), data(1, b"\x01\x00\x00\x00\x01z"))
    stream = await client.finish(1)
    assert stream.headers[0]["grpc-status"] == str(h2.UNIMPLEMENTED)


async def test_sync_unary_exception_is_internal_and_the_connection_stays_usable(
    harness: Harness,
) -> None:
    client = await harness.client()
    client.send(client.headers(1, CRASH), message(1, b"x", end_stream=True))
    stream = await client.finish(1)
    assert stream.headers[0]["grpc-status"] == str(h2.INTERNAL)
    client.send(client.headers(3, REVERSE), message(3, b"ok", end_stream=True))
    assert (await client.finish(3)).messages == [b"ko"]


async def test_long_grpc_message_respects_the_peer_max_frame_size(harness: Harness) -> None:
    client = await harness.client()
    client.send(client.headers(1, LONG_ERROR), message(1, b"x", end_stream=True))
    stream = await client.finish(1)  # the client refuses frames over 16 384 bytes
    assert stream.headers[0]["grpc-status"] == str(h2.INVALID_ARGUMENT)
    # cut to max_status_message characters: a handler cannot make the trailers large
    assert (
        unquote(stream.headers[0]["grpc-message"]) == "x" * harness.server.limits.max_status_message
    )


async def test_streams_over_the_limit_are_refused_and_counted(limited: LimitedServer) -> None:
    harness = await limited(H2Limits(max_concurrent_streams=2))
    client = await harness.client()
    assert client.server_settings[h2.MAX_CONCURRENT_STREAMS] == 2
    client.send(client.headers(1, ECHO), client.headers(3, ECHO), client.headers(5, ECHO))
    refused = await client.finish(5)
    assert refused.reset == h2.REFUSED_STREAM
    assert harness.server.stats.limit_hits["max_concurrent_streams"] == 1
    client.send(message(1, b"still", end_stream=True))  # the two admitted ones still work
    assert (await client.finish(1)).messages == [b"llits"]


async def test_ping_flood_is_answered_with_calm_goaway(limited: LimitedServer) -> None:
    harness = await limited(H2Limits(ping_burst=5, ping_rate=1))
    client = await harness.client()
    client.send(h2.frame(h2.PING, 0, 0, b"12345678") * 20)
    frames = await client.until_closed()
    assert len([f for f in frames if f.kind == h2.PING]) == 5  # the burst, then cut off
    assert client.goaway == (0, h2.ENHANCE_YOUR_CALM)
    assert harness.server.stats.limit_hits["ping_rate"] == 1


async def test_header_block_over_the_limit_is_a_calm_goaway(limited: LimitedServer) -> None:
    harness = await limited(H2Limits(max_header_block=1024))
    client = await harness.client()
    block = client.block(ECHO, extra=[("x-big", "v" * 2000)])
    client.send(
        h2.frame(h2.HEADERS, 0, 1, block[:600]), h2.frame(h2.CONTINUATION, 0, 1, block[600:])
    )
    await client.until_closed()
    assert client.goaway == (0, h2.ENHANCE_YOUR_CALM)
    assert harness.server.stats.limit_hits["max_header_block"] == 1


async def test_idle_connection_gets_goaway(limited: LimitedServer) -> None:
    harness = await limited(H2Limits(idle_timeout=0.2))
    client = await harness.client()
    await client.until_closed()  # within TIMEOUT
    assert client.goaway == (0, h2.NO_ERROR)
    assert harness.server.stats.limit_hits["idle_timeout"] == 1


def test_limits_from_the_command_line() -> None:
    limits = H2Limits().replace({"max_connections": "8", "idle_timeout": "2.5"})
    assert (limits.max_connections, limits.idle_timeout) == (8, 2.5)
    with pytest.raises(ValueError, match="unknown h2 limit"):
        H2Limits().replace({"max_conections": "8"})
    with pytest.raises(ValueError, match="needs a number"):
        H2Limits().replace({"max_connections": "many"})
    with pytest.raises(ValueError, match="positive"):
        H2Limits().replace({"send_timeout": "0"})


# -- interop with grpcio -----------------------------------------------------------------------

BIG = bytes(range(256)) * (3 * 1024 * 4)  # 3 MiB


async def test_grpcio_client_unary_calls(harness: Harness) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{harness.port}") as channel:
        sync_call = channel.unary_unary(REVERSE)
        async_call = channel.unary_unary(ASYNC_REVERSE)
        assert await asyncio.wait_for(sync_call(b"hello"), TIMEOUT) == b"olleh"
        assert await asyncio.wait_for(async_call(b"hello"), TIMEOUT) == b"olleh"
        assert await asyncio.wait_for(sync_call(BIG), TIMEOUT) == BIG[::-1]
        assert await asyncio.wait_for(async_call(BIG), TIMEOUT) == BIG[::-1]

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(channel.unary_unary(DENIED)(b"x"), TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == DENIED_MESSAGE

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(channel.unary_unary("/nope.Service/Missing")(b"x"), TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_grpcio_client_bidi_stream(harness: Harness) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{harness.port}") as channel:
        call = channel.stream_stream(ECHO)(metadata=(("x-role", "tester"),))
        await call.write(b"first")
        assert await asyncio.wait_for(call.read(), TIMEOUT) == b"tsrif"
        await call.write(BIG)
        assert await asyncio.wait_for(call.read(), TIMEOUT) == BIG[::-1]
        await call.write(b"")
        assert await asyncio.wait_for(call.read(), TIMEOUT) == b""
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), TIMEOUT) is grpc.aio.EOF
        assert await asyncio.wait_for(call.code(), TIMEOUT) == grpc.StatusCode.OK
    [session] = harness.sessions
    assert session.received == [b"first", BIG, b""]
    assert session.metadata["x-role"] == "tester"
    assert session.closes == 1


async def test_grpcio_client_cancel_closes_the_session(harness: Harness) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{harness.port}") as channel:
        call = channel.stream_stream(ECHO)()
        await call.write(b"abc")
        assert await asyncio.wait_for(call.read(), TIMEOUT) == b"cba"
        call.cancel()
        [session] = harness.sessions
        await asyncio.wait_for(session.closed.wait(), TIMEOUT)
        assert session.closes == 1
        # the channel (same connection) serves the next call
        assert await asyncio.wait_for(channel.unary_unary(REVERSE)(b"abc"), TIMEOUT) == b"cba"
    assert harness.server.in_flight == 0
