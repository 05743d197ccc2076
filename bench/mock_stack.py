"""Shared by the latency benchmarks that run real stacks over mock backends (`bench_ttft.py`,
`bench_capture.py`, `bench_gate_ttft.py`): `cascade serve` on a port it picks, an Envoy rendered
from the same config with its tiers pointed at the mock backends, and a clean stop.

Everything listens on 127.0.0.1 on ports chosen at run time; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cascade_dev.mock_backend import MockBackendThread

from extproc.config.snapshot import Backend, Snapshot, compile_config
from extproc.gateway.process import admin_port, envoy_command
from extproc.gateway.render import render_yaml

BIN = Path(sys.executable).parent


def wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve(
    config: Path, name: str, processes: list[subprocess.Popen[bytes]], *extra: str
) -> tuple[Snapshot, int]:
    """Start `cascade serve --config CONFIG EXTRA...` (added to `processes`); its compiled
    config and the gRPC port it listens on."""
    port_file = config.with_name(f"{name}.port")
    processes.append(
        subprocess.Popen(
            [str(BIN / "cascade"), "serve", "--config", str(config),
             "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--log-level", "warning", *extra],
            env={**os.environ, "CASCADE_PORT_FILE": str(port_file)},
        )
    )  # fmt: skip
    wait(port_file.exists, 30, f"cascade serve ({name})")
    return compile_config(config.read_text(), str(config)), int(port_file.read_text())


def routed(
    base: Snapshot, threads: list[MockBackendThread], grpc_port: int, **changes: Any
) -> Snapshot:
    """`base` with tier i served by mock backend i, Envoy on ports it picks, and `changes`."""
    tiers = tuple(
        dataclasses.replace(
            tier, backends=(Backend(address="127.0.0.1", port=t.port, model=tier.model),)
        )
        for tier, t in zip(base.tiers, threads, strict=True)
    )
    envoy = dataclasses.replace(
        base.envoy,
        listen="127.0.0.1:0",
        admin="127.0.0.1:0",
        ext_proc=(f"127.0.0.1:{grpc_port}",),
    )
    return dataclasses.replace(base, tiers=tiers, envoy=envoy, **changes)


def start_envoy(
    workdir: Path, name: str, snapshot: Snapshot, processes: list[subprocess.Popen[bytes]]
) -> int:
    """An Envoy rendered from `snapshot` (added to `processes`), once its ext_proc cluster is
    healthy; its listener's port."""
    config = workdir / f"{name}.yaml"
    config.write_text(render_yaml(snapshot))
    admin_file = workdir / f"{name}.admin"
    with (workdir / f"{name}.log").open("wb") as log:
        command = envoy_command(config, admin_file)
        processes.append(subprocess.Popen(command, stdout=log, stderr=log))
    wait(lambda: admin_port(admin_file) is not None, 30, f"{name} admin")
    admin = admin_port(admin_file) or 0

    def healthy() -> bool:
        try:
            return b"health_flags::healthy" in get(admin, "/clusters")
        except OSError:
            return False

    wait(healthy, 30, f"{name} ext_proc cluster healthy")
    listeners = json.loads(get(admin, "/listeners?format=json"))
    return int(listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"])


@contextlib.contextmanager
def running(threads: list[MockBackendThread]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start the mock backends; yield the list the stack's processes go in; stop them all."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for thread in threads:
            thread.start()
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for thread in threads:
            thread.stop()
