"""The response cache on the request path: look up before classifying, store a complete answer.

`lookup` runs on the buffered request body, before classification. A hit is answered by the
server itself (`immediate_response`): the stored JSON, or an SSE replay for `stream: true`, with
`x-cascade-cache: hit`, the match (`exact` or `semantic`) and the age. Otherwise the request goes
on as before and carries `x-cascade-cache` (`miss`, `bypass`, `skip` or `audit`), which Envoy's
route copies onto the client's response; the returned `CacheTicket` collects the answer.

When nothing may be cached (`skip`): no tenant identity under `scope: tenant`, a sampling
temperature above `max_temperature`, `n` other than 1. `Cache-Control: no-store` bypasses both
lookup and store, `no-cache` only the lookup.

`store` runs after the last response chunk has been answered (`RequestProcessor.after_answer`):
a 2xx answer that completed, under the size cap, storable by `extproc.core.cached_answer`. An
audited request (a would-be hit sent to the backend anyway) compares the two answers instead.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from extproc.config.cache import CacheSettings
from extproc.core import cached_answer, headers
from extproc.core.cache_key import CacheKeys, request_keys, tenant_of
from extproc.core.chat import ChatRequest
from extproc.core.similarity import Shingled, cosine, normalize, shingle
from extproc.routing.cache_store import CacheStore, Entry
from extproc.routing.observer import RequestInfo

logger = logging.getLogger(__name__)

#: request header set on every cached-path request; Envoy's route copies it to the response
HEADER = headers.CACHE
MATCH_HEADER = "x-cascade-cache-match"
AGE_HEADER = "x-cascade-cache-age"
#: answers of an audit agree when their texts are at least this similar
AUDIT_AGREEMENT = 0.9

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(slots=True)
class CacheTicket:
    """One request's way through the cache: its keys, and the answer as it streams back."""

    keys: CacheKeys
    partition: str
    status: str
    shingled: Shingled | None = None
    #: may the answer be stored (no `no-store`, a cacheable request)
    storable: bool = True
    audit: Entry | None = None
    audit_match: str = ""
    body: bytearray = field(default_factory=bytearray)
    overflow: bool = False

    def feed(self, chunk: bytes, limit: int) -> None:
        if self.overflow or not self.storable:
            return
        if len(self.body) + len(chunk) > limit:
            self.overflow = True
            self.body = bytearray()
            return
        self.body += chunk


def partition_of(settings: CacheSettings, classifier: str, path: str) -> str:
    version = classifier if settings.partition_by_classifier else ""
    return f"{settings.epoch}/{version}/{path}"


def _tenant(settings: CacheSettings, values: Mapping[str, str]) -> str | None:
    if settings.scope == "global":
        return "global"
    for name in settings.identity_headers:
        value = values.get(name, "")
        if value:
            return tenant_of(settings.secret, f"{name}\x00{value}")
    return None


def _cache_control(values: Mapping[str, str]) -> set[str]:
    value = values.get("cache-control", "")
    return {part.strip().lower() for part in value.split(",")} if value else set()


def _hot(settings: CacheSettings, document: Mapping[str, object]) -> bool:
    """Sampled too hot to reuse, or asking for several choices."""
    temperature = document.get("temperature", settings.default_temperature)
    if not isinstance(temperature, int | float) or isinstance(temperature, bool):
        temperature = settings.default_temperature
    n = document.get("n", 1)
    return temperature > settings.max_temperature or n not in (None, 1)


def lookup(
    store: CacheStore,
    settings: CacheSettings,
    chat: ChatRequest,
    values: Mapping[str, str],
    classifier: str,
    request_id: str,
) -> tuple[pb.ProcessingResponse | None, CacheTicket | None, str]:
    """(the hit's answer or None, the ticket to store with or None, the `x-cascade-cache` value)."""
    started = time.perf_counter()
    control = _cache_control(values)
    if "no-store" in control:
        store.count("lookup_bypass")
        return None, None, "bypass"
    tenant = _tenant(settings, values)
    if tenant is None or _hot(settings, chat.document):
        store.count("lookup_skip")
        return None, None, "skip"
    partition = partition_of(settings, classifier, values.get(":path", ""))
    keys = request_keys(
        chat.document,
        tenant,
        partition,
        settings.ignore_fields,
        semantic=settings.semantic.enabled,
        max_text=settings.semantic.max_chars,
    )
    semantic = keys.bucket is not None
    ticket = CacheTicket(keys, partition, "miss")
    if "no-cache" in control:
        ticket.status = "bypass"
        if semantic:
            ticket.shingled = shingle(keys.text)
        store.count("lookup_bypass")
        return None, ticket, "bypass"
    match = "exact"
    entry = store.exact(keys.exact)
    if entry is None and semantic:
        assert keys.bucket is not None
        ticket.shingled = shingle(keys.text)
        found = store.similar(keys.bucket, ticket.shingled, settings.semantic.threshold)
        if found is not None:
            entry, match = found[0], "semantic"
    store.observe_latency(time.perf_counter() - started)
    if entry is None:
        store.count("lookup_miss")
        return None, ticket, "miss"
    if settings.audit_share and _sampled(request_id, settings.audit_share):
        store.count(f"lookup_audit_{match}")
        ticket.status, ticket.audit, ticket.audit_match = "audit", entry, match
        return None, ticket, "audit"
    store.count(f"lookup_hit_{match}")
    answer = entry.answer
    tokens = store.saved_tokens.setdefault(entry.tier, [0, 0])
    tokens[0] += answer.prompt_tokens
    tokens[1] += answer.completion_tokens
    return replay(entry, match, settings, streamed=chat.document.get("stream") is True), None, "hit"


def _sampled(request_id: str, share: float) -> bool:
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode()), append_action=_OVERWRITE
    )


def replay(
    entry: Entry, match: str, settings: CacheSettings, *, streamed: bool
) -> pb.ProcessingResponse:
    """The immediate response of a hit."""
    age = str(max(0, int(time.time() - entry.created)))
    if streamed:
        body = cached_answer.replay_sse(entry.answer, settings.replay_chunk_chars)
        content_type = "text/event-stream"
    else:
        body, content_type = entry.answer.body, "application/json"
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=200),
            headers=pb.HeaderMutation(
                set_headers=[
                    _header("content-type", content_type),
                    _header(HEADER, "hit"),
                    _header(MATCH_HEADER, match),
                    _header(AGE_HEADER, age),
                    _header("age", age),
                    _header("x-cascade-served-tier", entry.tier),
                    _header("cache-control", "private"),
                ]
            ),
            body=body,
            details="cascade_cache_hit",
        )
    )


def store_answer(
    store: CacheStore,
    settings: CacheSettings,
    ticket: CacheTicket,
    *,
    status: int,
    complete: bool,
    streamed: bool,
    tier: str,
) -> str:
    """Store the collected answer if it may be; returns what happened (a counter's name)."""
    if not ticket.storable:
        return "skipped"
    reason = _refusal(ticket, status, complete)
    if reason:
        store.count(f"store_{reason}")
        return reason
    body = bytes(ticket.body)
    sse = streamed and body.lstrip().startswith((b"data:", b":", b"event:"))
    parse = cached_answer.from_sse if sse else cached_answer.from_json
    answer = parse(body, tool_calls=settings.store_tool_calls)
    ticket.body = bytearray()
    if isinstance(answer, str):
        store.count(f"store_{answer}")
        return answer
    if ticket.audit is not None:
        agree = _agree(ticket.audit.answer.content, answer.content)
        store.count(f"audit_{ticket.audit_match}_{'agree' if agree else 'differ'}")
    keys = ticket.keys
    shingled = ticket.shingled
    if settings.semantic.enabled and keys.bucket is not None and shingled is None:
        shingled = shingle(keys.text)
    now = store.clock()
    entry = Entry(
        key=keys.exact,
        answer=answer,
        tier=tier,
        created=now,
        expires=now + settings.ttl_s,
        bucket=keys.bucket if shingled is not None else None,
        shingled=shingled,
        partition=ticket.partition,
    )
    store.put(
        entry,
        max_entries=settings.max_entries,
        max_per_bucket=settings.semantic.max_per_bucket,
        local=True,
    )
    store.count("store_stored")
    return "stored"


def _refusal(ticket: CacheTicket, status: int, complete: bool) -> str:
    if not 200 <= status < 300:
        return "status"
    if not complete:
        return "incomplete"
    if ticket.overflow:
        return "too_large"
    return ""


def _agree(stored: str, fresh: str) -> bool:
    left, right = normalize(stored), normalize(fresh)
    if left == right:
        return True
    return cosine(shingle(left).grams, shingle(right).grams) >= AUDIT_AGREEMENT


class CachePath:
    """One request's use of the cache, held by `RequestProcessor`; no method raises."""

    __slots__ = ("_completed", "cache", "settings", "ticket")

    def __init__(self, cache: CacheStore, settings: CacheSettings) -> None:
        self.cache = cache
        self.settings = settings
        self.ticket: CacheTicket | None = None
        #: (status, complete, streamed, tier) of an answer waiting to be stored
        self._completed: tuple[int, bool, bool, str] | None = None

    def look_up(
        self, chat: ChatRequest, info: RequestInfo, version: str
    ) -> tuple[pb.ProcessingResponse | None, str]:
        """The hit's answer or None, and the `x-cascade-cache` value."""
        try:
            hit, self.ticket, status = lookup(
                self.cache, self.settings, chat, info.headers, version, info.request_id
            )
        except Exception:  # a bug in the cache must not cost the request: a counted miss
            self.cache.count("lookup_error")
            logger.exception("cache lookup failed (request %r)", info.request_id)
            return None, "error"
        return hit, status

    def feed(self, chunk: bytes) -> None:
        if self.ticket is not None:
            self.ticket.feed(chunk, self.settings.max_entry_bytes)

    def finished(self, status: int, complete: bool, streamed: bool, tier: str) -> None:
        if self.ticket is not None:
            self._completed = (status, complete, streamed, tier)

    @property
    def pending(self) -> bool:
        return self._completed is not None

    def store(self) -> None:
        """Store the completed answer (nothing before the answer has completed)."""
        ticket, completed = self.ticket, self._completed
        if ticket is None or completed is None:
            return
        self.ticket = self._completed = None
        status, complete, streamed, tier = completed
        try:
            store_answer(
                self.cache,
                self.settings,
                ticket,
                status=status,
                complete=complete,
                streamed=streamed,
                tier=tier,
            )
        except Exception:  # a bug must not cost the request: counted, logged, not stored
            self.cache.count("store_error")
            logger.exception("cache store failed")
