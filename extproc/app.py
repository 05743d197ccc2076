"""Wiring for `cascade serve`: config store, grpc.aio server, health, reload, signals, drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.api import SERVICE as CASCADE_SERVICE
from extproc.api import CascadeService, add_to_server
from extproc.metrics import Metrics, MetricsServer
from extproc.processor import Observer
from extproc.recorder import Recorder
from extproc.reload import ConfigStore
from extproc.server import ExternalProcessor
from extproc.telemetry import Tracing

logger = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


@dataclass
class ServeOptions:
    config: Path
    listen: str = "127.0.0.1:50051"
    #: after SIGTERM: report NOT_SERVING this long before refusing new streams
    drain_delay: float = 2.0
    #: then wait at most this long for open streams to finish
    grace: float = 10.0
    reload_interval: float = 1.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    extra_services: list[object] = field(default_factory=list)
    #: Prometheus `/metrics` address (port 0 = any free port); None = no endpoint
    metrics_listen: str | None = None


class CascadeServer:
    """A running server; `start()`, then `wait()` or `shutdown()`."""

    def __init__(self, options: ServeOptions, observer: Observer | None = None) -> None:
        self.options = options
        self.store = ConfigStore.open(options.config)
        self.metrics = Metrics()
        self.recorder = Recorder.from_settings(
            lambda: self.store.current, self.metrics, Tracing.from_env()
        )
        self.store.listeners.append(self.recorder.reloaded)
        self.servicer = ExternalProcessor(lambda: self.store.current, observer or self.recorder)
        self.metrics.track_inflight(lambda: self.servicer.in_flight)
        self.api = CascadeService(lambda: self.store.current, self.recorder)
        self.metrics_server: MetricsServer | None = None
        self.metrics_port = 0
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        # Envoy's buffer limit is the real cap on bodies; let gRPC carry what Envoy sends.
        limit = self.store.current.server.max_body_bytes + 4 * 1024 * 1024
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max(limit, 64 * 1024 * 1024)),
                ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 1),
            ]
        )
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        add_to_server(self.api, server)
        options = self.options
        if options.tls_cert and options.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(options.tls_key.read_bytes(), options.tls_cert.read_bytes())]
            )
            self.port = server.add_secure_port(options.listen, credentials)
        else:
            self.port = server.add_insecure_port(options.listen)
        self.recorder.start()
        if options.metrics_listen is not None:
            self._start_metrics(options.metrics_listen)
        await server.start()
        self._server = server
        for service in ("", EXT_PROC_SERVICE, CASCADE_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._watch = asyncio.create_task(self.store.watch(options.reload_interval))
        # Everything loaded so far lives for the whole process: keep it out of the GC's scans.
        gc.freeze()
        port_file = os.environ.get("CASCADE_PORT_FILE")
        if port_file:  # lets tests and tools bind port 0 and learn the port
            Path(port_file).write_text(str(self.port))
        logger.info(
            "cascade serving on port %d (classifier %s, config %s)",
            self.port,
            self.store.current.stable,
            options.config,
        )
        return self.port

    def _start_metrics(self, listen: str) -> None:
        """Serve `/metrics`; a busy port is logged, not fatal (routing matters more)."""
        server = MetricsServer(self.metrics, listen)
        try:
            self.metrics_port = server.start()
        except OSError as exc:
            logger.error("metrics endpoint %s unavailable, serving without it: %s", listen, exc)
            return
        self.metrics_server = server
        port_file = os.environ.get("CASCADE_METRICS_PORT_FILE")
        if port_file:
            Path(port_file).write_text(str(self.metrics_port))

    async def shutdown(self) -> None:
        """NOT_SERVING → wait `drain_delay` → stop accepting → wait up to `grace` for streams."""
        if self._server is None or self._stopped.is_set():
            return
        logger.info("shutting down: NOT_SERVING, draining %d open streams", self.servicer.in_flight)
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.options.drain_delay)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._server.stop(self.options.grace)
        await self.recorder.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        logger.info("stopped")
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def run(options: ServeOptions, observer: Observer | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then drain and return 0."""
    server = CascadeServer(options, observer)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if stopping:
            return
        logger.info("received %s", signal.Signals(signum).name)
        stopping.append(asyncio.create_task(server.shutdown()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await server.wait()
    return 0
