"""SSE time to first chunk through Envoy, with and without response processing.

    .venv/bin/python bench/bench_ttft.py [--requests 300] [--warmup 30]

Starts on 127.0.0.1 (ports chosen at run time) two stacks of the end-to-end tests' `Gateway`
(mock backends streaming SSE with a final usage event, `cascade serve`, Envoy), one with
`telemetry.response_processing: true` (response body STREAMED, each chunk answered at once,
attributes on the first chunk) and one with it off. Requests alternate between the two stacks
so both see the same machine noise; each measures the time from sending the request to
the first response body bytes at the client. Prints the medians and percentiles and the
difference of the medians (the target: at most 1 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.e2e
from tests.e2e.harness import Gateway

BODY = json.dumps(
    {
        "model": "auto",
        "messages": [{"role": "user", "content": "hello, how are you today?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()


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
    with tempfile.TemporaryDirectory(prefix="bench-ttft-") as tmp, contextlib.ExitStack() as stack:
        ports = {}
        for name, observe in (("on", "true"), ("off", "false")):
            workdir = Path(tmp) / name
            workdir.mkdir()
            gateway = Gateway(
                workdir,
                f"telemetry: {{response_processing: {observe}}}",
                stream_delay_ms=2,
                backend_options={"stream_chunks": 3},
                serve_args=("--transport", args.transport),
            )
            stack.callback(gateway.close)
            ports[name] = gateway.port
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
