"""The ext_proc transports' shared part, and the grpc.aio one.

Both transports open one processor per stream with `open_processor` and feed it every message:
`ExternalProcessor` is the grpc.aio servicer (a thin stream loop); `ExtProcSession` is the same
loop for the lean HTTP/2 transport (`extproc.transport.h2`), which hands it serialized messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.config.drift import RoutesGuard
from extproc.config.snapshot import Snapshot
from extproc.core import headers
from extproc.routing.cache_store import CacheStore
from extproc.routing.capture import PairJoiner
from extproc.routing.observer import Observer
from extproc.routing.processor import RequestProcessor
from extproc.routing.upstream import UpstreamProcessor

logger = logging.getLogger(__name__)


def role_of(context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse]) -> str:
    """The stream's role from gRPC metadata `x-cascade-role` (absent: the classifier)."""
    return metadata_value(context, headers.ROLE_METADATA)


def metadata_value(
    context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse], name: str
) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return ""


def open_processor(
    snapshot: Snapshot,
    observer: Observer | None,
    role: str,
    cache: CacheStore | None = None,
    pairs: PairJoiner | None = None,
) -> RequestProcessor | UpstreamProcessor:
    """The processor for a new stream: per-attempt (`upstream` role) or the classifier."""
    if role == headers.ROLE_UPSTREAM:  # per-attempt filter on a cluster
        return UpstreamProcessor(snapshot, observer, pairs)
    return RequestProcessor(snapshot, observer, cache, pairs)


def _after_write(callback: Callable[[], None]) -> None:
    """Run `callback` after the current event-loop callback (which writes the answer)."""
    try:
        asyncio.get_running_loop().call_soon(callback)
    except RuntimeError:  # no loop (a synchronous caller): now
        callback()


class ExtProcSession:
    """One ext_proc stream on the HTTP/2 transport: bytes in, bytes out, same processor."""

    __slots__ = ("_owner", "_processor")

    def __init__(self, owner: ExternalProcessor, metadata: dict[str, str]) -> None:
        self._owner = owner
        self._processor = open_processor(
            owner.snapshot_for(metadata.get(headers.ROUTES_METADATA, "")),
            owner.observer,
            metadata.get(headers.ROLE_METADATA, ""),
            owner.cache,
            owner.pairs,
        )
        owner.in_flight += 1

    @property
    def done(self) -> bool:
        return self._processor.done

    def message(self, raw: bytes) -> bytes | list[bytes]:
        request = pb.ProcessingRequest.FromString(raw)
        processor = self._processor
        if isinstance(processor, UpstreamProcessor):  # may hold answers (the confidence gate)
            return [bytes(a.SerializeToString()) for a in processor.handle_all(request)]
        answer = bytes(processor.handle(request).SerializeToString())
        # the connection writes the answer when this returns; telemetry runs after that
        if self._processor.pending:
            _after_write(self._processor.after_answer)
        return answer

    def close(self) -> None:
        self._owner.in_flight -= 1
        self._processor.close()


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One stream per HTTP request; each message answered in order, at once."""

    def session(self, metadata: dict[str, str]) -> ExtProcSession:
        """The HTTP/2 transport's stream factory."""
        return ExtProcSession(self, metadata)

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        observer: Observer | None = None,
        cache: CacheStore | None = None,
        routes: RoutesGuard | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.observer = observer
        #: the response cache, shared by every stream (used when the config enables it)
        self.cache = cache
        #: picks the snapshot Envoy can route (extproc/config/drift.py); None: always current
        self.routes = routes
        #: the mirrored-pair joiner when `capture:` is on (set by the app)
        self.pairs: PairJoiner | None = None
        #: streams currently open (read by shutdown and metrics)
        self.in_flight = 0

    def snapshot_for(self, envoy_routes: str) -> Snapshot:
        """The snapshot a new stream decides with, given Envoy's `x-cascade-routes`."""
        if self.routes is None:
            return self.snapshot()
        return self.routes.snapshot_for(envoy_routes)

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> AsyncIterator[pb.ProcessingResponse]:
        processor = open_processor(
            self.snapshot_for(metadata_value(context, headers.ROUTES_METADATA)),
            self.observer,
            role_of(context),
            self.cache,
            self.pairs,
        )
        self.in_flight += 1
        try:
            async for request in request_iterator:
                if isinstance(processor, UpstreamProcessor):  # may hold answers (the gate)
                    for answer in processor.handle_all(request):
                        yield answer
                    if processor.done:
                        return
                    continue
                yield processor.handle(request)
                processor.after_answer()  # resumed once the answer is written
                if processor.done:
                    return
        finally:
            self.in_flight -= 1
            processor.close()
