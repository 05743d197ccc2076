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
from typing import Any

import yaml
from cascade_dev.mock_backend import MockBackend, MockBackendThread

from extproc.config.snapshot import DEFAULT_CONFIG, Backend, compile_config
from extproc.gateway.process import admin_port, envoy_command
from extproc.gateway.render import render_yaml

BIN = Path(sys.executable).parent
TOKENS = 80
TEXT = " ".join(f"w{i}" for i in range(TOKENS))
REFUSAL = "I'm sorry, but I can't help with that. " + TEXT


def body(stream: bool, prompt: str = "hello, how are you today?") -> bytes:
    return json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    ).encode()


def wait(predicate: Any, timeout: float, what: str) -> None:
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
    def __init__(
        self,
        workdir: Path,
        name: str,
        hold: int | None,
        threads: list[MockBackendThread],
        transport: str,
    ) -> None:
        self.name = name
        document = yaml.safe_load(DEFAULT_CONFIG.read_text())
        document["server"]["rewrite_model"] = True
        if hold is not None:
            document["tiers"][0]["gate"] = {"hold_tokens": hold, "hold_ms": 500}
        config = workdir / f"{name}.cascade.yaml"
        config.write_text(yaml.safe_dump(document, allow_unicode=True))
        port_file = workdir / f"{name}.port"
        self.processes = [
            subprocess.Popen(
                [str(BIN / "cascade"), "serve", "--config", str(config),
                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--log-level", "warning", "--transport", transport],
                env={**os.environ, "CASCADE_PORT_FILE": str(port_file)},
            )
        ]  # fmt: skip
        wait(port_file.exists, 30, f"{name} cascade serve")
        base = compile_config(config.read_text(), str(config))
        tiers = tuple(
            dataclasses.replace(
                tier, backends=(Backend(address="127.0.0.1", port=t.port, model=tier.model),)
            )
            for tier, t in zip(base.tiers, threads, strict=True)
        )
        snapshot = dataclasses.replace(
            base,
            tiers=tiers,
            envoy=dataclasses.replace(
                base.envoy,
                listen="127.0.0.1:0",
                admin="127.0.0.1:0",
                ext_proc=(f"127.0.0.1:{int(port_file.read_text())}",),
            ),
        )
        envoy_config = workdir / f"{name}.envoy.yaml"
        envoy_config.write_text(render_yaml(snapshot))
        admin_file = workdir / f"{name}.admin"
        log = (workdir / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(envoy_command(envoy_config, admin_file), stdout=log, stderr=log)
        )
        wait(lambda: admin_port(admin_file) is not None, 30, f"{name} admin")
        admin = admin_port(admin_file) or 0
        wait(
            lambda: b"health_flags::healthy" in get(admin, "/clusters"),
            30,
            f"{name} ext_proc healthy",
        )
        listeners = json.loads(get(admin, "/listeners?format=json"))
        port = int(
            listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        )
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def stop(self) -> None:
        self.conn.close()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


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
    with tempfile.TemporaryDirectory(prefix="bench-gate-ttft-") as tmp:
        variants: list[Variant] = []
        try:
            for thread in threads:
                thread.start()
            variants.append(Variant(Path(tmp), "off", None, threads, args.transport))
            for hold in holds:
                variants.append(Variant(Path(tmp), f"hold{hold}", hold, threads, args.transport))
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
        finally:
            for variant in variants:
                variant.stop()
            for thread in threads:
                thread.stop()
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
