"""What the confidence gate adds: time to first byte of passing answers, and escalation latency.

    .venv/bin/python bench/bench_gate_ttft.py [--requests 100] [--holds 8,32] [--transport h2]

Starts on 127.0.0.1 (ports chosen at run time) one stack of the end-to-end tests' `Gateway` per
variant (mock backends for weak and strong that stream a token, one content event, every 2 ms;
`cascade serve`; Envoy): the gate off, and a gate on weak holding N tokens (`--holds`;
`hold_ms` 500). Requests go round
robin over the variants so all see the same machine noise. Measured at the client:

- streamed passing answer (80 tokens): time to the first body bytes, and to the end;
- non-streamed passing answer: time to the whole answer;
- escalation: weak refuses (scripted), the gate retries on strong; time to first byte and to the
  end, against a request the classifier sends to strong directly (gate-off variant).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.e2e
from tests.e2e.harness import Gateway

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
    """One stack whose weak tier's gate holds `hold` tokens (None: no gate)."""

    def __init__(self, workdir: Path, name: str, hold: int | None, transport: str) -> None:
        self.name = name

        def edit(document: dict[str, Any], _gateway: Gateway) -> None:
            if hold is not None:
                document["tiers"][0]["gate"] = {"hold_tokens": hold, "hold_ms": 500}

        workdir.mkdir()
        self.gateway = Gateway(
            workdir,
            stream_delay_ms=2,
            edit_config=edit,
            backend_options={"stream_chunks": TOKENS},
            serve_args=("--transport", transport),
        )
        self.conn = http.client.HTTPConnection("127.0.0.1", self.gateway.port, timeout=30)

    def close(self) -> None:
        self.conn.close()
        self.gateway.close()


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
    passing = {"x-mock-content": TEXT}
    results: dict[tuple[str, str], list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-gate-ttft-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        names = [("off", None)] + [(f"hold{hold}", hold) for hold in holds]
        variants = []
        for name, hold in names:
            variants.append(Variant(Path(tmp) / name, name, hold, args.transport))
            stack.callback(variants[-1].close)
        cases = [("stream", True, passing), ("json", False, passing)]
        for index in range(args.warmup + args.requests):
            for case, stream, headers in cases:
                for variant in variants if index % 2 == 0 else variants[::-1]:
                    first, end, _ = timed(variant.conn, body(stream), headers)
                    if index >= args.warmup:
                        results.setdefault((variant.name, f"{case} first"), []).append(first)
                        results.setdefault((variant.name, f"{case} end"), []).append(end)
        gated = variants[-1]
        gated.gateway.backends["weak"].script(always={"content": REFUSAL})
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
