"""The gRPC transport: a thin `ExternalProcessor` stream loop over `RequestProcessor`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc import headers
from extproc.config import Snapshot
from extproc.processor import Observer, RequestProcessor
from extproc.upstream import UpstreamProcessor

logger = logging.getLogger(__name__)


def role_of(context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse]) -> str:
    """The stream's role from gRPC metadata `x-cascade-role` (absent: the classifier)."""
    for key, value in context.invocation_metadata() or ():
        if key == headers.ROLE_METADATA:
            return str(value)
    return ""


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One stream per HTTP request; each message answered in order, at once."""

    def __init__(self, snapshot: Callable[[], Snapshot], observer: Observer | None = None) -> None:
        self._snapshot = snapshot
        self._observer = observer
        #: streams currently open (read by shutdown and metrics)
        self.in_flight = 0

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> AsyncIterator[pb.ProcessingResponse]:
        processor: RequestProcessor | UpstreamProcessor
        if role_of(context) == headers.ROLE_UPSTREAM:  # per-attempt filter on a cluster
            processor = UpstreamProcessor(self._snapshot(), self._observer)
        else:
            processor = RequestProcessor(self._snapshot(), self._observer)
        self.in_flight += 1
        try:
            async for request in request_iterator:
                yield processor.handle(request)
                if processor.done:
                    return
        finally:
            self.in_flight -= 1
            processor.close()
