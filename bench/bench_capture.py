"""Routed request latency through Envoy with mirror + pair capture on and off.

    .venv/bin/python bench/bench_capture.py [--requests 300] [--warmup 30]

Starts on 127.0.0.1 (ports chosen at run time) three stacks of the end-to-end tests' `Gateway`
(mock backends, `cascade serve`, Envoy) from the same config but for:

- `plain`: no mirror, no capture;
- `mirror`: every weak request mirrored to strong (`tiers[].mirror.percent: 100`), no capture;
- `capture`: the same mirror with `capture: {tiers: [weak]}` (JSONL sink in a temporary
  directory): the shadow's answer read on the per-attempt role, the primary's on the response
  path, joined, redacted and written by the writer thread.

`telemetry.response_processing` and `server.rewrite_model` are on in all three (capture needs
them), so the difference is the mirror and the capture alone. Requests (non-streamed, a short
weak-routed prompt) alternate between the stacks so each sees the same machine noise; each is
timed from sending the request to the last byte of the answer at the client. Prints p50, p90,
p99 per mode, the pairs written, and the differences of the medians.
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
from typing import Any

from bench_ttft import percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.e2e
from tests.e2e.harness import Gateway

BODY = json.dumps(
    {"model": "auto", "messages": [{"role": "user", "content": "hello, how are you today?"}]}
).encode()
MODES = ("plain", "mirror", "capture")


def edit_for(mode: str) -> Any:
    """The `Gateway` config edit of one mode (the stack's own directory holds its sink)."""

    def edit(document: dict[str, Any], gateway: Gateway) -> None:
        document.setdefault("telemetry", {})["response_processing"] = True
        if mode != "plain":
            document["tiers"][0]["mirror"] = {"tier": "strong", "percent": 100}
        if mode == "capture":
            document["capture"] = {
                "tiers": ["weak"],
                "sink": {"kind": "jsonl", "path": str(gateway.workdir / "pairs.jsonl")},
            }

    return edit


def timed(conn: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    conn.request(
        "POST", "/v1/chat/completions", body=BODY, headers={"content-type": "application/json"}
    )
    reply = conn.getresponse()
    body = reply.read()
    elapsed = time.perf_counter() - started
    assert reply.status == 200 and body, reply.status
    return elapsed


def measure(ports: dict[str, int], requests: int, warmup: int) -> dict[str, list[float]]:
    conns = {
        mode: http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for mode, port in ports.items()
    }
    for _ in range(warmup):
        for conn in conns.values():
            timed(conn)
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for index in range(requests):
        shift = index % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            results[mode].append(timed(conns[mode]))
    for conn in conns.values():
        conn.close()
    return results


def count_pairs(sink: Path, expected: int) -> int:
    deadline = time.monotonic() + 10
    pairs = 0
    while time.monotonic() < deadline:
        pairs = len(sink.read_bytes().splitlines()) if sink.exists() else 0
        if pairs >= expected:
            break
        time.sleep(0.1)
    return pairs


def report(results: dict[str, list[float]], pairs: int, mirrored: int, requests: int) -> None:
    print(f"Routed request through Envoy, {requests} requests per mode (ms)")
    print(f"{'mode':<36} {'p50':>7} {'p90':>7} {'p99':>7}")
    labels = {
        "plain": "no mirror",
        "mirror": "mirror 100 % to strong",
        "capture": "mirror 100 % + pair capture",
    }
    for mode in MODES:
        values = [v * 1000 for v in results[mode]]
        print(
            f"{labels[mode]:<36} {statistics.median(values):7.3f} "
            f"{percentile(values, 0.9):7.3f} {percentile(values, 0.99):7.3f}"
        )
    median = {mode: statistics.median(results[mode]) * 1000 for mode in MODES}
    print(f"pairs written: {pairs} of {mirrored} mirrored requests")
    print(f"added by the mirror, p50: {median['mirror'] - median['plain']:+.3f} ms")
    added = median["capture"] - median["mirror"]
    print(f"added by capture on top of the mirror, p50: {added:+.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        ports = {}
        for mode in MODES:
            (Path(tmp) / mode).mkdir()
            gateway = Gateway(Path(tmp) / mode, edit_config=edit_for(mode))
            stack.callback(gateway.close)
            ports[mode] = gateway.port
        results = measure(ports, args.requests, args.warmup)
        mirrored = args.requests + args.warmup
        pairs = count_pairs(Path(tmp) / "capture" / "pairs.jsonl", mirrored)
    report(results, pairs, mirrored, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
