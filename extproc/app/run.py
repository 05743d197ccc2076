"""Wiring for `cascade serve`: config store, gRPC transport, health, reload, signals, drain.

Two transports serve the same methods on `--listen`: `h2` (default; `extproc.transport.h2`, a lean
HTTP/2 gRPC server on asyncio) and `grpcio` (grpc.aio). Both answer ext_proc `Process`,
`grpc.health.v1.Health/Check` and the `cascade.v1` API; `Health/Watch` and server reflection
exist only on `grpcio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.app import cache_metrics, routes_metrics, transport_metrics
from extproc.app.cache_sync import CacheSync
from extproc.config.drift import RoutesGuard
from extproc.config.store import ConfigStore
from extproc.core.hostport import parse_listen
from extproc.routing.cache_store import CacheStore
from extproc.routing.observer import Observer
from extproc.services.api import SERVICE as CASCADE_SERVICE
from extproc.services.api import CascadeApi, add_to_server, h2_methods
from extproc.services.auth import Authenticator, parse_tokens
from extproc.telemetry.metrics import Metrics, MetricsServer
from extproc.telemetry.pair_sink import start_capture
from extproc.telemetry.recorder import Recorder
from extproc.telemetry.tracing import Tracing
from extproc.transport.grpcio import ExternalProcessor
from extproc.transport.h2.frames import NOT_FOUND, GrpcError
from extproc.transport.h2.limits import H2Limits, H2Stats, MiB
from extproc.transport.h2.server import H2Server, tls_context

logger = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
PROCESS_PATH = f"/{EXT_PROC_SERVICE}/Process"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
#: Health service reporting NOT_SERVING while Envoy routes other tiers than the config's
#: (extproc/config/drift.py); the server itself keeps serving.
ROUTES_SERVICE = "cascade.routes"
TRANSPORTS = ("h2", "grpcio")


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
    #: PEM CA bundle: require a client certificate it signed (mutual TLS with Envoy)
    tls_client_ca: Path | None = None
    extra_services: list[object] = field(default_factory=list)
    #: Prometheus `/metrics` address (port 0 = any free port); None = no endpoint
    metrics_listen: str | None = None
    #: `h2` (the lean HTTP/2 transport) or `grpcio` (grpc.aio)
    transport: str = "h2"
    #: `caller token` lines for `cascade.v1` (extproc/services/auth.py); None = API refused
    api_tokens: Path | None = None
    #: share the listen port with other processes (SO_REUSEPORT); off: a busy port is an error
    reuse_port: bool = False
    #: `H2Limits` fields to change, name -> value as text (`cascade serve --h2-limit`)
    h2_limits: dict[str, str] = field(default_factory=dict)


def _authenticator(options: ServeOptions) -> Authenticator | None:
    if options.api_tokens is None:
        return None
    source = str(options.api_tokens)
    return Authenticator(parse_tokens(options.api_tokens.read_text(), source))


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
        self.routes = RoutesGuard(lambda: self.store.current, self._routes_changed)
        self.store.listeners.append(self.routes.reloaded)
        self.cache = CacheStore()
        self.servicer = ExternalProcessor(
            lambda: self.store.current, observer or self.recorder, self.cache, self.routes
        )
        routes_metrics.register(self.metrics.registry, self.routes)
        self.metrics.track_inflight(lambda: self.servicer.in_flight)
        cache_metrics.register(self.metrics.registry, self.cache, lambda: self.store.current)
        settings = self.store.current.cache
        #: Redis replication of the cache (read at start: changing the backend needs a restart)
        self.cache_sync = (
            CacheSync(self.cache, lambda: self.store.current)
            if settings.enabled and settings.backend == "redis"
            else None
        )
        # mirrored-pair capture (`capture:`; its sink is fixed at start, like the decision log)
        self.pairs = start_capture(
            self.store.current.capture, self.recorder.redact, self.metrics.registry
        )
        if self.pairs is not None:
            self.servicer.pairs = self.pairs.joiner
        self.api = CascadeApi(
            lambda: self.store.current, self.recorder, _authenticator(options), cache=self.cache
        )
        self.metrics_server: MetricsServer | None = None
        self.metrics_port = 0
        self.health = health.aio.HealthServicer()
        #: health by service name, as the h2 transport answers `Health/Check`
        self.serving: dict[str, int] = {}
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._h2: H2Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._health_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        options = self.options
        if options.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        self.recorder.start()
        if self.cache_sync is not None:
            self.cache_sync.start()
        if options.metrics_listen is not None:
            self._start_metrics(options.metrics_listen)
        if options.transport == "h2":
            self.port = await self._start_h2()
        else:
            self.port = await self._start_grpcio()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._watch = asyncio.create_task(self.store.watch(options.reload_interval))
        # Everything loaded so far lives for the whole process: keep it out of the GC's scans.
        gc.freeze()
        port_file = os.environ.get("CASCADE_PORT_FILE")
        if port_file:  # lets tests and tools bind port 0 and learn the port
            Path(port_file).write_text(str(self.port))
        logger.info(
            "cascade serving on port %d over %s (classifier %s, config %s)",
            self.port,
            options.transport,
            self.store.current.stable,
            options.config,
        )
        return self.port

    def transport_limits(self) -> H2Limits:
        """`H2Limits` for this config: messages as large as Envoy sends, plus `--h2-limit`."""
        # Envoy buffers up to envoy.max_request_bytes and sends it in one ProcessingRequest;
        # 1 MiB covers the wrapping (headers, attributes). More is refused (RESOURCE_EXHAUSTED).
        snapshot = self.store.current
        message = max(snapshot.server.max_body_bytes, snapshot.envoy.max_request_bytes) + MiB
        base = H2Limits()
        base = base.replace(
            {
                "max_message": str(message),
                "max_buffered_bytes": str(max(base.max_buffered_bytes, message)),
                "max_buffered_total": str(max(base.max_buffered_total, message)),
            }
        )
        return base.replace(self.options.h2_limits)

    async def _start_h2(self) -> int:
        options = self.options
        unary = {HEALTH_CHECK_PATH: self._health_check, **h2_methods(self.api)}
        limits = self.transport_limits()
        self.h2_stats = H2Stats()
        self._h2 = H2Server(
            {PROCESS_PATH: self.servicer.session}, unary, limits=limits, stats=self.h2_stats
        )
        transport_metrics.register(self.metrics.registry, self.h2_stats, limits)
        host, port = parse_listen(options.listen)
        context = None
        if options.tls_cert and options.tls_key:
            context = tls_context(options.tls_cert, options.tls_key, options.tls_client_ca)
        return await self._h2.start(host, port, context, reuse_port=options.reuse_port)

    def _health_check(self, raw: bytes, metadata: dict[str, str]) -> bytes:
        service = health_pb2.HealthCheckRequest.FromString(raw).service
        status = self.serving.get(service)
        if status is None:
            raise GrpcError(NOT_FOUND, f"unknown service {service!r}")
        return bytes(health_pb2.HealthCheckResponse(status=status).SerializeToString())

    async def _set_health(self, status: int) -> None:
        for service in ("", EXT_PROC_SERVICE, CASCADE_SERVICE):
            self.serving[service] = status
            if self._server is not None:
                await self.health.set(service, status)
        if status != health_pb2.HealthCheckResponse.SERVING or self.routes.in_sync:
            await self._set_routes_health(status)

    def _routes_changed(self, in_sync: bool) -> None:
        """`RoutesGuard` callback (on the event loop): the `cascade.routes` condition."""
        serving = health_pb2.HealthCheckResponse
        status = serving.SERVING if in_sync else serving.NOT_SERVING
        if self._stopped.is_set() or self.serving.get("") != serving.SERVING:
            return
        task = asyncio.get_running_loop().create_task(self._set_routes_health(status))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _set_routes_health(self, status: int) -> None:
        self.serving[ROUTES_SERVICE] = status
        if self._server is not None:
            await self.health.set(ROUTES_SERVICE, status)

    async def _start_grpcio(self) -> int:
        server = grpc.aio.server(
            options=grpcio_options(self.transport_limits(), reuse_port=self.options.reuse_port)
        )
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        add_to_server(self.api, server)
        options = self.options
        credentials = None
        if options.tls_cert and options.tls_key:
            client_ca = options.tls_client_ca
            credentials = grpc.ssl_server_credentials(
                [(options.tls_key.read_bytes(), options.tls_cert.read_bytes())],
                root_certificates=client_ca.read_bytes() if client_ca else None,
                require_client_auth=client_ca is not None,
            )
        try:
            if credentials is not None:
                port: int = server.add_secure_port(options.listen, credentials)
            else:
                port = server.add_insecure_port(options.listen)
        except RuntimeError as exc:  # grpc core's "Failed to bind": the same error as h2's
            raise OSError(errno.EADDRINUSE, f"cannot listen on {options.listen}: {exc}") from None
        await server.start()
        self._server = server
        return port

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
        if (self._server is None and self._h2 is None) or self._stopped.is_set():
            return
        logger.info("shutting down: NOT_SERVING, draining %d open streams", self.servicer.in_flight)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.options.drain_delay)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._server is not None:
            await self._server.stop(self.options.grace)
        if self._h2 is not None:
            await self._h2.stop(self.options.grace)
        await self.recorder.stop()
        if self.cache_sync is not None:
            await self.cache_sync.stop()
        if self.pairs is not None:
            self.pairs.joiner.drain()  # the streams are closed: no side will come now
            self.pairs.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        logger.info("stopped")
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


def grpcio_options(limits: H2Limits, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """What grpc.aio channel arguments can bound of `H2Limits` (docs/security.md: the rest)."""
    return [
        ("grpc.max_receive_message_length", limits.max_message),
        ("grpc.max_send_message_length", limits.max_message),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_metadata_size", limits.max_header_block),
        ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout * 1000)),
        ("grpc.keepalive_time_ms", int(limits.keepalive_interval * 1000)),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout * 1000)),
        # a PING sooner than 1/ping_rate after the last one (without data) is a strike;
        # after 2 strikes: GOAWAY ENHANCE_YOUR_CALM "too_many_pings"
        ("grpc.http2.min_ping_interval_without_data_ms", int(1000 / limits.ping_rate)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


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
