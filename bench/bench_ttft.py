"""SSE time to first chunk through Envoy, with and without response processing.

    .venv/bin/python bench/bench_ttft.py [--requests 300] [--warmup 30]

Starts on 127.0.0.1 (ports chosen at run time): one mock backend per tier (streams SSE with a
final usage event), one `cascade serve`, and two Envoys rendered from the same cascade config,
one with `telemetry.response_processing: true` (response body STREAMED, each chunk answered at
once, attributes on the first chunk) and one with it off. Requests alternate between the two
Envoys so both see the same machine noise; each measures the time from sending the request to
the first response body bytes at the client. Prints the medians and percentiles and the
difference of the medians (the target: at most 1 ms).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cascade_dev.mock_backend import MockBackend, MockBackendThread

from extproc.config.snapshot import DEFAULT_CONFIG, Backend, Snapshot, compile_config
from extproc.gateway.process import admin_port, envoy_command
from extproc.gateway.render import render_yaml

BIN = Path(sys.executable).parent
BODY = json.dumps(
    {
        "model": "auto",
        "messages": [{"role": "user", "content": "hello, how are you today?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
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


def start_envoy(
    workdir: Path, name: str, snapshot: Snapshot
) -> tuple[subprocess.Popen[bytes], int]:
    config = workdir / f"{name}.yaml"
    config.write_text(render_yaml(snapshot))
    admin_file = workdir / f"{name}.admin"
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        envoy_command(config, admin_file),
        stdout=log,
        stderr=log,
    )
    wait(lambda: admin_port(admin_file) is not None, 30, f"{name} admin")
    admin = admin_port(admin_file) or 0

    def healthy() -> bool:
        try:
            return b"health_flags::healthy" in get(admin, "/clusters")
        except OSError:
            return False

    wait(healthy, 30, f"{name} ext_proc cluster healthy")
    listeners = json.loads(get(admin, "/listeners?format=json"))
    port = int(listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"])
    return process, port


def first_chunk(conn: http.client.HTTPConnection) -> float:
    """Seconds from sending the request to the first body bytes; the rest is read and dropped."""
    started = time.perf_counter()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=BODY,
        headers={"content-type": "application/json", "x-mock-stream-delay-ms": "2"},
    )
    reply = conn.getresponse()
    chunk = reply.read1(65536)
    elapsed = time.perf_counter() - started
    assert reply.status == 200 and chunk, reply.status
    while reply.read1(65536):
        pass
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--transport", choices=["h2", "grpcio"], default="h2", help="cascade serve --transport"
    )
    args = parser.parse_args()
    processes: list[subprocess.Popen[bytes]] = []
    threads = [
        MockBackendThread(MockBackend("weak", ["qwen3-4b"], stream_delay_ms=2, stream_chunks=3)),
        MockBackendThread(MockBackend("strong", ["glm-5"], stream_delay_ms=2, stream_chunks=3)),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-ttft-") as tmp:
        workdir = Path(tmp)
        try:
            for thread in threads:
                thread.start()
            document = yaml.safe_load(DEFAULT_CONFIG.read_text())
            config = workdir / "cascade.yaml"
            config.write_text(yaml.safe_dump(document, allow_unicode=True))
            port_file = workdir / "serve.port"
            serve = subprocess.Popen(
                [
                    str(BIN / "cascade"),
                    "serve",
                    "--config",
                    str(config),
                    "--listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--log-level",
                    "warning",
                    "--transport",
                    args.transport,
                ],
                env={**os.environ, "CASCADE_PORT_FILE": str(port_file)},
            )
            processes.append(serve)
            wait(port_file.exists, 20, "cascade serve")
            grpc_port = int(port_file.read_text())
            base = compile_config(config.read_text(), str(config))
            tiers = tuple(
                dataclasses.replace(
                    tier, backends=(Backend(address="127.0.0.1", port=t.port, model=tier.model),)
                )
                for tier, t in zip(base.tiers, threads, strict=True)
            )
            ports = {}
            for name, observe in (("on", True), ("off", False)):
                snapshot = dataclasses.replace(
                    base,
                    tiers=tiers,
                    envoy=dataclasses.replace(
                        base.envoy,
                        listen="127.0.0.1:0",
                        admin="127.0.0.1:0",
                        ext_proc=(f"127.0.0.1:{grpc_port}",),
                    ),
                    telemetry=dataclasses.replace(base.telemetry, response_processing=observe),
                )
                process, ports[name] = start_envoy(workdir, f"envoy-{name}", snapshot)
                processes.append(process)
            conns = {
                name: http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                for name, port in ports.items()
            }
            for _ in range(args.warmup):
                for conn in conns.values():
                    first_chunk(conn)
            results: dict[str, list[float]] = {"on": [], "off": []}
            for index in range(args.requests):
                order = ("on", "off") if index % 2 == 0 else ("off", "on")
                for name in order:
                    results[name].append(first_chunk(conns[name]))
            for conn in conns.values():
                conn.close()
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
    print(f"SSE time to first chunk through Envoy, {args.requests} requests per mode (ms)")
    print(f"{'mode':<28} {'p50':>7} {'p90':>7} {'p99':>7}")
    for name, label in (("off", "response processing off"), ("on", "response processing on")):
        values = [v * 1000 for v in results[name]]
        print(
            f"{label:<28} {statistics.median(values):7.3f} {percentile(values, 0.9):7.3f} "
            f"{percentile(values, 0.99):7.3f}"
        )
    delta = (statistics.median(results["on"]) - statistics.median(results["off"])) * 1000
    print(f"added by response processing, p50: {delta:+.3f} ms (target <= 1 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
