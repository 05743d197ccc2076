"""The confidence gate on the per-attempt (upstream) role: hold, judge, release or escalate.

The classifier marks a request its tier's gate will judge (`x-cascade-gate: answer`, see
`marker`); the per-attempt filter on the gated tier's aggregate cluster then, for the attempt
on a gated tier,

1. answers the request headers with a processing-mode override: response headers SEND and
   response body BUFFERED, so Envoy holds the answer until the gate has decided (only this
   attempt pays for it; every other attempt keeps the static SKIP/NONE modes);
2. reads the request body (`response_format`, declared tools);
3. at the end of the answer judges it (`extproc.core.gate.judge`): a passing answer is released
   unchanged with `x-cascade-confidence`; a failing one gets `x-cascade-escalate`, which the
   route's retry policy retries, one priority on: the next tier.

The attempt that follows an escalation finds the request id in `ESCALATIONS` (a bounded table
of this process) and sets `x-cascade-escalated: weak->strong` and the gated confidence on the
client's answer. Anything odd (a non-200 status, a body that is not a completion, an encoded
body) releases the answer unchanged and is counted as `skipped`.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.gate import TierGate
from extproc.config.snapshot import Snapshot
from extproc.core import headers
from extproc.core.chat import ChatRequest
from extproc.core.classify import Decision
from extproc.core.gate import (
    GateRequest,
    Verdict,
    answer_of,
    is_near,
    judge,
    request_of,
    usage_of,
)
from extproc.core.gate_stream import with_logprobs, without_logprobs
from extproc.routing import mutations
from extproc.routing.gate_hold import Hold
from extproc.routing.observer import GateInfo, Observer, RequestInfo

logger = logging.getLogger(__name__)

_MODE = modes.ProcessingMode
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
ANSWER = "answer"
STREAM = "stream"
NEAR = ";near"


def marker(
    snapshot: Snapshot, decision: Decision, chat: ChatRequest | None
) -> tuple[tuple[str, str], ...]:
    """The `x-cascade-gate` request header for a decision, or nothing when no gate applies."""
    gates = snapshot.gates
    if chat is None or not gates.applies(decision.tier, decision.classifier, decision.rule):
        return ()
    kind = STREAM if chat.document.get("stream") is True else ANSWER
    gate = gates.tiers[decision.tier]
    if is_near(decision.score, decision.threshold, gate.settings.near_margin):
        kind += NEAR
    return ((headers.GATE, kind),)


class EscalationTable:
    """request id -> (escalation `from->to`, confidence) for the attempt that follows; bounded in
    entries (oldest dropped) and in age."""

    def __init__(self, max_entries: int = 4096, max_age_s: float = 600.0) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._entries: collections.OrderedDict[str, tuple[float, str, str]] = (
            collections.OrderedDict()
        )

    def put(self, request_id: str, escalation: str, confidence: str) -> None:
        if not request_id:
            return
        self._entries[request_id] = (time.monotonic(), escalation, confidence)
        self._entries.move_to_end(request_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, request_id: str) -> tuple[str, str] | None:
        entry = self._entries.pop(request_id, None) if request_id else None
        if entry is None or time.monotonic() - entry[0] > self.max_age_s:
            return None
        return entry[1], entry[2]


ESCALATIONS = EscalationTable()


def _set(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode()), append_action=_OVERWRITE
    )


def _override(*, body: bool) -> pb.ProcessingResponse:
    """The request-headers answer that asks for this attempt's response (headers; body held)."""
    answer = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
    mode = answer.mode_override
    mode.request_header_mode = _MODE.SEND
    mode.request_body_mode = _MODE.BUFFERED  # the gated aggregate's static request mode
    mode.response_header_mode = _MODE.SEND
    mode.response_body_mode = _MODE.BUFFERED if body else _MODE.NONE
    mode.request_trailer_mode = _MODE.SKIP
    mode.response_trailer_mode = _MODE.SKIP
    return answer


class GateAttempt:
    """One gated attempt, or the attempt after an escalation (`follow`)."""

    __slots__ = (
        "add_logprobs",
        "escalate_to",
        "follow",
        "gate",
        "hold",
        "info",
        "length",
        "near",
        "observer",
        "request",
        "status",
        "usage",
    )

    def __init__(
        self,
        gate: TierGate | None,
        escalate_to: str,
        info: RequestInfo,
        observer: Observer,
        near: bool = False,
        follow: tuple[str, str] | None = None,
    ) -> None:
        self.gate = gate
        self.escalate_to = escalate_to
        self.info = info
        self.observer = observer
        self.near = near
        self.follow = follow
        self.request = GateRequest()
        self.status = ""
        #: the gate asked the backend for logprobs (`request_logprobs`): strip them on release
        self.add_logprobs = False
        #: the backend's answer declared a content-length (held mode sets the new one)
        self.length = False
        #: the aggregate's filter sends every response (`gate.streams`): the answer is held by
        #: not answering its messages yet (`extproc.routing.gate_hold`)
        self.hold: Hold | None = None
        #: (prompt, completion) tokens of the judged answer, charged when it is discarded
        self.usage: tuple[int | None, int | None] = (None, None)

    @classmethod
    def open(
        cls,
        snapshot: Snapshot,
        values: dict[str, str],
        host_tier: str,
        info: RequestInfo,
        observer: Observer,
    ) -> GateAttempt | None:
        """The gate for this attempt, or None (not marked, not a gated hop, no budget)."""
        followed = ESCALATIONS.pop(info.request_id)
        mark = values.get(headers.GATE, "")
        decided = values.get(headers.TIER, "")
        chain = snapshot.gates.chain(decided)
        gate = snapshot.gates.tiers.get(host_tier)
        # The decided tier's aggregate has static response modes when its gate holds streams.
        first = snapshot.gates.tiers.get(decided)
        held = first is not None and first.settings.streams
        stream = mark.startswith(STREAM)
        # The last hop of the chain (or a host outside it) is never gated.
        if mark and (held or not stream) and host_tier in chain[:-1] and gate is not None:
            target = chain[chain.index(host_tier) + 1]
            attempt = cls(gate, target, info, observer, mark.endswith(NEAR), followed)
            if held:
                attempt.hold = Hold(gate.settings, stream)
            return attempt
        if followed is not None:
            return cls(None, "", info, observer, follow=followed)
        return None

    def request_headers_answer(self) -> pb.ProcessingResponse:
        return _override(body=self.gate is not None)

    def on_request_body(self, body: bytes) -> None:
        if self.gate is None:
            return
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(document, dict):
            self.request = request_of(document)
            self.add_logprobs = (
                self.gate.settings.request_logprobs
                and document.get("stream") is not True
                and document.get("logprobs") is not True
            )

    def request_body(self, body: bytes) -> bytes | None:
        """The gated attempt's body asking for logprobs, or None to leave it."""
        return with_logprobs(body) if self.add_logprobs else None

    def _stripped(self, verdict: Verdict, document: Any) -> bytes | None:
        """The released answer without the logprobs the gate asked for."""
        if not self.add_logprobs or verdict.escalate:
            return None
        return without_logprobs(document)

    def _read_status(self, message: pb.HttpHeaders) -> None:
        encoded = False
        for header in message.headers.headers:
            if header.key == headers.STATUS:
                self.status = header.raw_value.decode("latin-1")
            elif header.key == "content-encoding" and header.raw_value not in (b"", b"identity"):
                encoded = True
            elif header.key == headers.CONTENT_LENGTH:
                self.length = True
        if encoded:
            self.status = "encoded"

    def held_headers(self, message: pb.HttpHeaders, timeout_ms: int) -> list[pb.ProcessingResponse]:
        """Held mode: keep the headers unanswered for a 200 answer, else release them."""
        hold = self.hold
        assert hold is not None
        self._read_status(message)
        if self.status != "200":
            self.skipped("encoded" if self.status == "encoded" else "status")
            return hold.release(self.followed_headers())
        return hold.start(timeout_ms)

    def held_body(self, message: pb.HttpBody) -> list[pb.ProcessingResponse]:
        """Held mode: hold the chunk; once the hold is over, judge and answer everything."""
        hold, gate = self.hold, self.gate
        assert hold is not None and gate is not None
        if not hold.holding:
            return [mutations.EMPTY_RESPONSE_BODY]
        if not hold.add(message):
            return []
        answer = hold.answer(message.end_of_stream)
        if answer is None:
            self.skipped("unparsable")
            return hold.release(self.followed_headers())
        self.usage = hold.usage()
        verdict = judge(gate.settings, self.request, answer, self.near)
        body = None if hold.stream else self._stripped(verdict, hold.document)
        sets = self.decided(verdict)
        if body is not None and self.length:
            sets.append(_set(headers.CONTENT_LENGTH, str(len(body))))
        return hold.release(sets, body)

    def on_response_headers(self, message: pb.HttpHeaders) -> pb.ProcessingResponse:
        self._read_status(message)
        if self.follow is not None and self.gate is None:
            common = pb.CommonResponse(
                header_mutation=pb.HeaderMutation(set_headers=self.followed_headers())
            )
            return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))
        return mutations.EMPTY_RESPONSE_HEADERS

    def on_response_body(self, message: pb.HttpBody) -> pb.ProcessingResponse:
        gate = self.gate
        if gate is None or not message.end_of_stream:
            return mutations.EMPTY_RESPONSE_BODY
        if self.status != "200":
            self.skipped("status" if self.status != "encoded" else "encoded")
            return mutations.EMPTY_RESPONSE_BODY
        try:
            document = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            document = None
        answer = answer_of(document)
        if answer is None:
            self.skipped("unparsable")
            return mutations.EMPTY_RESPONSE_BODY
        verdict = judge(gate.settings, self.request, answer, self.near)
        self.usage = usage_of(document)
        sets = self.decided(verdict)
        body = self._stripped(verdict, document)
        if body is not None:
            sets.append(_set(headers.CONTENT_LENGTH, str(len(body))))
        common = pb.CommonResponse(
            # A backend's own x-cascade-escalate never triggers a retry: only the verdict's does.
            header_mutation=pb.HeaderMutation(set_headers=sets, remove_headers=[headers.ESCALATE])
        )
        if body is not None:
            common.body_mutation.body = body
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))

    def followed_headers(self) -> list[base_pb2.HeaderValueOption]:
        if self.follow is None:
            return []
        escalation, confidence = self.follow
        return [_set(headers.ESCALATED, escalation), _set(headers.CONFIDENCE, confidence)]

    def decided(self, verdict: Verdict) -> list[base_pb2.HeaderValueOption]:
        """The response headers for a verdict (and its telemetry, the escalation table)."""
        gate = self.gate
        assert gate is not None
        confidence = f"{verdict.confidence:.3f}"
        sets = [_set(headers.CONFIDENCE, confidence)]
        before = self.follow[0] if self.follow is not None else gate.tier
        if not verdict.escalate and self.follow is not None:
            sets.append(_set(headers.ESCALATED, before))
        if verdict.escalate:
            escalation = f"{before}->{self.escalate_to}"
            sets.append(_set(headers.ESCALATE, escalation))
            ESCALATIONS.put(self.info.request_id, escalation, confidence)
            logger.info(
                "gate: escalating %s (confidence %s, %s; request %r)",
                escalation,
                confidence,
                ",".join(verdict.reasons),
                self.info.request_id,
            )
        self.observer.gated(
            GateInfo(
                tier=gate.tier,
                escalate_to=self.escalate_to if verdict.escalate else "",
                confidence=verdict.confidence,
                band=verdict.band,
                reason=verdict.reason,
                reasons=verdict.reasons,
                tokens_in=self.usage[0] if verdict.escalate else None,
                tokens_out=self.usage[1] if verdict.escalate else None,
            ),
            self.info,
        )
        return sets

    def skipped(self, why: str) -> None:
        assert self.gate is not None
        self.observer.gated(GateInfo(tier=self.gate.tier, skipped=why), self.info)
