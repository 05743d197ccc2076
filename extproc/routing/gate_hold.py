"""Holding a gated attempt's answer by not answering its messages yet (`gate.streams`).

The gated aggregate's per-attempt filter then has static response modes: response headers
SEND, body STREAMED, and `send_body_without_waiting_for_header_response`, so body chunks reach
the server while Envoy still waits for the answer to the response headers. Envoy forwards
nothing of the attempt's response before that answer. The server

1. keeps the response-headers message unanswered, asking Envoy to wait up to the hold
   (`override_message_timeout`; a stall beyond it fails open: Envoy releases the answer
   unjudged);
2. collects chunks: a streamed answer until `hold_tokens` content events, `hold_ms` since the
   headers (checked as chunks arrive) or its end; a non-streamed one until its end;
3. answers the headers (with the verdict's headers: `x-cascade-escalate` makes the route retry)
   and then every held chunk, unchanged; later chunks are answered as they come, so a released
   stream stays incremental and is never cut.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import duration_pb2

from extproc.core.gate import Answer, GateSettings, answer_of, usage_of
from extproc.core.gate_stream import MAX_BYTES, StreamPrefix
from extproc.core.headers import ESCALATE
from extproc.routing import mutations

__all__ = ["Hold"]


class Hold:
    __slots__ = (
        "_body",
        "_usage",
        "document",
        "held",
        "holding",
        "prefix",
        "settings",
        "started",
        "stream",
    )

    def __init__(self, settings: GateSettings, stream: bool) -> None:
        self.settings = settings
        self.stream = stream
        self.holding = False
        self.held = 0
        self.started = 0.0
        self.prefix = StreamPrefix()
        self._body = bytearray()
        self._usage: tuple[int | None, int | None] = (None, None)
        #: the parsed non-streamed answer, once judged
        self.document: Any = None

    def start(self, timeout_ms: int) -> list[pb.ProcessingResponse]:
        """Hold the response headers (no answer yet), Envoy waiting up to `timeout_ms`."""
        self.holding = True
        self.started = time.monotonic()
        seconds, millis = divmod(timeout_ms, 1000)
        wait = duration_pb2.Duration(seconds=seconds, nanos=millis * 1_000_000)
        return [pb.ProcessingResponse(override_message_timeout=wait)]

    def add(self, message: pb.HttpBody) -> bool:
        """Hold one more chunk; True once the hold is over (judge now)."""
        self.held += 1
        if self.stream:
            self.prefix.feed(message.body)
            if message.end_of_stream or self.prefix.done:
                return True
            settings = self.settings
            return (
                self.prefix.tokens >= settings.hold_tokens
                or (time.monotonic() - self.started) * 1000 >= settings.hold_ms
            )
        if len(self._body) <= MAX_BYTES:
            self._body += message.body
        return bool(message.end_of_stream)

    def answer(self, complete: bool) -> Answer | None:
        """What to judge: the streamed prefix, or the whole non-streamed answer (None when it
        is no `chat.completion`)."""
        if self.stream:
            return self.prefix.answer(complete)
        try:
            document = orjson.loads(bytes(self._body))
        except orjson.JSONDecodeError:
            return None
        self._usage = usage_of(document)
        self.document = document
        return answer_of(document)

    def usage(self) -> tuple[int | None, int | None]:
        """Tokens of the held answer: its `usage`, or a stream's content events so far."""
        return (None, self.prefix.tokens) if self.stream else self._usage

    def release(
        self, sets: list[base_pb2.HeaderValueOption], body: bytes | None = None
    ) -> list[pb.ProcessingResponse]:
        """The held messages' answers: the headers (with `sets`), then every held chunk; with
        `body`, the first chunk becomes it and the others empty."""
        self.holding = False
        # A backend's own x-cascade-escalate never triggers a retry: only the verdict's does.
        mutation = pb.HeaderMutation(set_headers=sets, remove_headers=[ESCALATE])
        common = pb.CommonResponse(header_mutation=mutation)
        first = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))
        held, self.held = self.held, 0
        if body is None or not held:
            return [first, *([mutations.EMPTY_RESPONSE_BODY] * held)]
        replaced = pb.CommonResponse()
        replaced.body_mutation.body = body
        cleared = pb.CommonResponse()
        cleared.body_mutation.clear_body = True
        rest = [pb.ProcessingResponse(response_body=pb.BodyResponse(response=cleared))] * (held - 1)
        return [
            first,
            pb.ProcessingResponse(response_body=pb.BodyResponse(response=replaced)),
            *rest,
        ]
