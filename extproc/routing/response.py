"""The response side of one classified request: Envoy's attributes, status, first chunk, usage.

Envoy sends it when `telemetry.response_processing` is on. The first response message carries
Envoy's attributes (status, cluster, the chosen host's metadata naming its tier); each body chunk
is fed to a bounded `ResponseMeter`. `facts` freezes what was seen into a `ResponseInfo`.
"""

from __future__ import annotations

import time

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config.snapshot import Snapshot
from extproc.core import headers
from extproc.routing.attributes import read_response_attributes
from extproc.routing.headermap import header_map
from extproc.routing.observer import ResponseInfo
from extproc.routing.usage import ResponseMeter


class ResponseTracker:
    """Mutable while the answer streams; private to the processor."""

    __slots__ = ("cluster", "first_chunk", "meter", "served_tier", "status", "upstream")

    def __init__(self, snapshot: Snapshot, first: pb.ProcessingRequest) -> None:
        self.meter = ResponseMeter(snapshot.telemetry.max_response_bytes)
        self.first_chunk: float | None = None
        status, cluster, tier, _model, address = read_response_attributes(first)
        self.status = status
        self.cluster = cluster
        self.served_tier = tier if tier in snapshot.tier_names else ""
        self.upstream = address

    def on_headers(self, message: pb.HttpHeaders) -> None:
        values = header_map(message.headers)
        status = values.get(headers.STATUS, "")
        if status.isdigit():
            self.status = int(status)
        if not self.cluster:
            self.cluster = values.get(headers.SERVED_CLUSTER, "")

    def on_body(self, chunk: bytes) -> None:
        if self.first_chunk is None and chunk:
            self.first_chunk = time.perf_counter()
        self.meter.feed(chunk)

    def facts(self, snapshot: Snapshot, decided_tier: str, *, complete: bool) -> ResponseInfo:
        meter = self.meter
        if complete:
            meter.end()
        return ResponseInfo(
            status=self.status,
            cluster=self.cluster,
            served_tier=self.served_tier or tier_of_cluster(snapshot, self.cluster, decided_tier),
            upstream=self.upstream,
            first_chunk=self.first_chunk,
            ended=time.perf_counter(),
            complete=complete,
            tokens_in=meter.tokens_in,
            tokens_out=meter.tokens_out,
            model=meter.model,
        )


def tier_of_cluster(snapshot: Snapshot, cluster: str, decided_tier: str) -> str:
    """`tier_<name>` clusters name their tier; anything else: the decided tier."""
    if cluster.startswith("tier_") and cluster[5:] in snapshot.tier_names:
        return cluster[5:]
    return decided_tier
