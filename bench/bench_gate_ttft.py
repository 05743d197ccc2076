"""What the confidence gate adds: time to first byte of passing answers, and escalation latency.

    .venv/bin/python bench/bench_gate_ttft.py [--requests 100] [--holds 8,32] [--transport h2]

Starts on 127.0.0.1 (ports chosen at run time): mock backends for weak and strong that stream a
token (one content event) every 2 ms, then one `cascade serve` + Envoy pair per variant: the
gate off, and a gate on weak holding N tokens (`--holds`; `hold_ms` 500). Requests go round
robin over the variants so all see the same machine noise. Measured at the client:

- streamed passing answer (80 tokens): time to the first body bytes, and to the end;
- non-streamed passing answer: time to the whole answer;
- escalation: weak refuses (scripted), the gate retries on strong; time to first byte and to the
  end, against a request the classifier sends to strong directly (gate-off variant).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cascade_dev.mock_backend import MockBackend, MockBackendThread
from mock_stack import routed, running, serve, start_envoy

from extproc.config.snapshot import DEFAULT_CONFIG

TOKENS = 80
TEXT = " ".join(f"w{i}" for i in range(TOKENS))
REFUSAL = "I'm sorry, but I can't help with that. " + TEXT


def body(stream: bool, prompt: str = "hello, how are you today?") -> bytes:
    return json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    ).encode()


def timed(
    conn: http.client.HTTPConnection, data: bytes, headers: dict[str, str]
) -> tuple[float, float, str]:
    """(seconds to the first body bytes, seconds to the end, backend that answered)."""
    started = time.perf_counter()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=data,
        headers={"content-type": "application/json", **headers},
    )
    reply = conn.getresponse()
    chunk = reply.read1(65536)
    first = time.perf_counter() - started
    assert reply.status == 200 and chunk, reply.status
    while reply.read1(65536):
        pass
    return first, time.perf_counter() - started, reply.getheader("x-mock-backend") or ""


class Variant:
    """One stack: `cascade serve` with the weak tier's gate at `hold` tokens (None: off) and an
    Envoy in front of it, its processes added to `processes`."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        hold: int | None,
        threads: list[MockBackendThread],
        transport: str,
        processes: list[subprocess.Popen[bytes]],
    ) -> None:
        self.name = name
        document = yaml.safe_load(DEFAULT_CONFIG.read_text())
        document["server"]["rewrite_model"] = True
        if hold is not None:
            document["tiers"][0]["gate"] = {"hold_tokens": hold, "hold_ms": 500}
        config = workdir / f"{name}.cascade.yaml"
        config.write_text(yaml.safe_dump(document, allow_unicode=True))
        base, grpc_port = serve(config, name, processes, "--transport", transport)
        snapshot = routed(base, threads, grpc_port)
        port = start_envoy(workdir, f"{name}.envoy", snapshot, processes)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def row(label: str, values: list[float]) -> str:
    return f"| {label} | {statistics.median(values) * 1000:.1f} | {pct(values, 0.9):.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="measured requests per case")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--holds", default="8,32", help="hold_tokens of the gated variants")
    parser.add_argument("--transport", choices=["h2", "grpcio"], default="h2")
    args = parser.parse_args()
    holds = [int(h) for h in args.holds.split(",") if h]
    backends = {
        name: MockBackend(name, [model], stream_delay_ms=2, stream_chunks=TOKENS)
        for name, model in (("weak", "qwen3-4b"), ("strong", "glm-5"))
    }
    threads = [MockBackendThread(b) for b in backends.values()]
    passing = {"x-mock-content": TEXT}
    results: dict[tuple[str, str], list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-gate-ttft-") as tmp,
        running(threads) as processes,
    ):
        variants = [Variant(Path(tmp), "off", None, threads, args.transport, processes)]
        for hold in holds:
            variants.append(
                Variant(Path(tmp), f"hold{hold}", hold, threads, args.transport, processes)
            )
        cases = [("stream", True, passing), ("json", False, passing)]
        for index in range(args.warmup + args.requests):
            for case, stream, headers in cases:
                for variant in variants if index % 2 == 0 else variants[::-1]:
                    first, end, _ = timed(variant.conn, body(stream), headers)
                    if index >= args.warmup:
                        results.setdefault((variant.name, f"{case} first"), []).append(first)
                        results.setdefault((variant.name, f"{case} end"), []).append(end)
        backends["weak"].script(always={"content": REFUSAL})
        gated = variants[-1]
        for index in range(args.warmup + args.requests):
            first, end, served = timed(gated.conn, body(True), {})
            assert served == "strong", served
            direct = timed(variants[0].conn, body(True, "please refactor this"), {})
            assert direct[2] == "strong", direct[2]
            if index >= args.warmup:
                results.setdefault((gated.name, "escalated first"), []).append(first)
                results.setdefault((gated.name, "escalated end"), []).append(end)
                results.setdefault(("off", "strong first"), []).append(direct[0])
                results.setdefault(("off", "strong end"), []).append(direct[1])
        for variant in variants:
            variant.conn.close()
    print(f"{args.requests} requests per case, tokens every 2 ms, {TOKENS} tokens (ms)\n")
    print("| case | p50 | p90 |\n|---|---:|---:|")
    for (name, case), values in results.items():
        print(row(f"{name}: {case}", values))
    off = statistics.median(results[("off", "stream first")])
    for hold in holds:
        added = (statistics.median(results[(f"hold{hold}", "stream first")]) - off) * 1000
        json_added = (
            statistics.median(results[(f"hold{hold}", "json end")])
            - statistics.median(results[("off", "json end")])
        ) * 1000
        print(f"\nhold {hold} tokens: streamed TTFT +{added:.1f} ms (p50);", end=" ")
        print(f"non-streamed +{json_added:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
