"""What classification costs on the request path, measured through the real Envoy.

Stacks, same machine, same run, 4 KB chat bodies, routes answering with `direct_response` so no
upstream adds noise:

- floor: Envoy alone (buffer filter + direct_response);
- go-pass-through: Envoy + a grpc-go pass-through ext_proc (`../shared/anchors/go-extproc`,
  built by its build.sh from Debian's golang packages): the compiled-language ceiling;
- pass-through: Envoy + a minimal grpc.aio ext_proc (bench/passthrough_extproc.py), the
  baseline the targets are set against;
- pass-through-h2: the same constant answers on cascade's lean HTTP/2 transport;
- cascade: Envoy + `cascade serve` (default h2 transport; v7 classification, tier header,
  route re-match, metrics and the telemetry recorder);
- cascade-grpcio: the same with `--transport grpcio`;
- cascade-before (with `--before PATH`): another checkout's `cascade`, for before/after figures
  in one run.

Load: wrk (Debian package) at 1 and 16 connections. Reported: req/s, p50, p99, latency added
over the floor, and the ext_proc server's CPU per request (from /proc).

    .venv/bin/python bench/bench_gateway.py [--seconds 10] [--rounds 3] [--before OTHER/cascade]
    make bench-gateway       # installs wrk and the Go toolchain packages first
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, load_snapshot
from extproc.gateway.common import TYPE
from extproc.gateway.render import bootstrap

BIN = Path(sys.executable).parent
STACKS = (
    "floor",
    "go-pass-through",
    "pass-through",
    "pass-through-h2",
    "cascade",
    "cascade-grpcio",
)
HERE = Path(__file__).resolve().parent
#: grpc-go pass-through ext_proc (same answers as passthrough_extproc.py), beside the project root
GO_ANCHOR = HERE.parent.parent / "shared" / "anchors" / "go-extproc"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body_4k() -> bytes:
    """A valid chat body of just under 4096 bytes, mixed English / Korean / Chinese."""
    filler = "Explain what this function returns for empty input, 빈 입력, 空输入. "
    text = filler * 80
    while True:
        body = json.dumps(
            {"model": "auto", "messages": [{"role": "user", "content": text}]},
            ensure_ascii=False,
        ).encode()
        if len(body) <= 4096:
            return body
        text = text[: -max(1, (len(body) - 4096) // 3)]


def post_script(tmp: Path, body: bytes) -> Path:
    """A wrk script that POSTs `body` (kept in a file beside it) as JSON."""
    path = tmp / "body.json"
    path.write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["content-type"] = "application/json"\n'
        f'local f = io.open("{path}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    return script


def print_table(results: dict[str, dict[int, dict[str, float]]], floor: bool = False) -> None:
    """One row per stack and connection count; with `floor`, the latency added to the floor's."""
    base = results["floor"]
    extra = f"{'+p50':>6} {'+p99':>6} " if floor else ""
    print(
        f"\n{'stack':<15} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{extra}{'srv CPU µs/req':>14}"
    )
    for name, by_conn in results.items():
        for conns, f in by_conn.items():
            added = ""
            if floor:
                added = (
                    f"{f['p50_ms'] - base[conns]['p50_ms']:>6.2f} "
                    f"{f['p99_ms'] - base[conns]['p99_ms']:>6.2f} "
                )
            print(
                f"{name:<15} {conns:>5} {f['rps']:>8.0f} {f['p50_ms']:>7.2f} {f['p99_ms']:>7.2f} "
                f"{added}{f.get('server_cpu_us', 0):>14.0f}"
            )


def envoy_config(
    listen: int,
    admin: int,
    extproc_port: int | None,
    snapshot: Snapshot | None = None,
    answer: bytes | None = None,
) -> dict[str, Any]:
    """Envoy for one stack: the routes answer `direct_response` (their name, or `answer`)."""
    if snapshot is None:
        snapshot = load_snapshot(DEFAULT_CONFIG)
        # Request path only: the response side (TTFT, usage) is measured by bench_ttft.py.
        snapshot = dataclasses.replace(
            snapshot,
            telemetry=dataclasses.replace(snapshot.telemetry, response_processing=False),
        )
    config = bootstrap(snapshot)
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        name = route["name"]
        route.pop("route")
        route.pop("response_headers_to_add", None)
        body = answer.decode() if answer is not None else name
        route["direct_response"] = {"status": 200, "body": {"inline_string": body}}
    clusters = config["static_resources"]["clusters"]
    if extproc_port is None:
        hcm["http_filters"][0] = {
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": TYPE + "envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 16 * 1024 * 1024,
            },
        }
        config["static_resources"]["clusters"] = []
    else:
        endpoint = clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        endpoint["endpoint"]["address"]["socket_address"]["port_value"] = extproc_port
        config["static_resources"]["clusters"] = clusters[:1]
    return config


@contextlib.contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def check_routed(port: int) -> None:
    """The ext_proc server really decided: a tier route answered, not the tier-less default.

    Envoy fails open, so a server that is down or broken would otherwise look very fast.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body_4k(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answered = response.read().decode()
    if not answered.startswith("tier_"):
        raise SystemExit(f"ext_proc did not route the probe request (route {answered!r})")


def wrk(port: int, connections: int, seconds: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non2xx": float(m.group(1)) if (m := re.search(r"Non-2xx.*?(\d+)", out)) else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def build_go_anchor(tmp: Path) -> Path:
    """Build the Go pass-through with its own build.sh (Debian's golang packages, no network)."""
    binary = tmp / "go-extproc" / "go-extproc"
    # build.sh keeps its GOPATH and build cache under the system temp dir: rebuilds are quick
    subprocess.run(["bash", str(GO_ANCHOR / "build.sh"), str(binary)], check=True, timeout=600)
    return binary


def run_stack(
    name: str, tmp: Path, seconds: int, script: Path, cascades: dict[str, Path]
) -> dict[int, dict[str, float]]:
    listen, admin = free_port(), free_port()
    server_args: list[str] | None = None
    extproc_port = None
    if name != "floor":
        extproc_port = free_port()
        if name == "go-pass-through":
            server_args = [str(cascades[name]), "-listen", f"127.0.0.1:{extproc_port}"]
        elif name.startswith("pass-through"):
            server_args = [
                sys.executable,
                str(HERE / "passthrough_extproc.py"),
                str(extproc_port),
                "--transport",
                "h2" if name.endswith("-h2") else "grpcio",
            ]
        else:
            server_args = [
                str(cascades.get(name, BIN / "cascade")),
                "serve",
                "--listen",
                f"127.0.0.1:{extproc_port}",
                "--log-level",
                "warning",
                "--transport",
                "grpcio" if name.endswith("-grpcio") else "h2",
                "--metrics-listen",
                "off",
            ]
    envoy = envoy_config(listen, admin, extproc_port)
    return measure_stack(tmp / name, envoy, listen, server_args, extproc_port, seconds, script)


def measure_stack(
    prefix: Path,
    envoy: dict[str, Any],
    listen: int,
    server_args: list[str] | None,
    extproc_port: int | None,
    seconds: int,
    script: Path,
) -> dict[int, dict[str, float]]:
    """`start_stack`, a check that requests are routed, a warm-up, then wrk at 1 and 16
    connections: the figures per connection count."""
    results: dict[int, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        server = start_stack(stack, prefix, envoy, listen, server_args, extproc_port)
        if server is not None:
            check_routed(listen)
        wrk(listen, 4, 2, script)  # warm-up
        for connections in (1, 16):
            results[connections] = measured(listen, server, connections, seconds, script)
    return results


def start_stack(
    stack: contextlib.ExitStack[Any],
    prefix: Path,
    envoy: dict[str, Any],
    listen: int,
    server_args: list[str] | None = None,
    extproc_port: int | None = None,
) -> subprocess.Popen[bytes] | None:
    """The ext_proc server (None: Envoy alone) and an Envoy with config `envoy` listening on
    `listen`, stopped with `stack`; logs and config beside `prefix`. Returns once the Envoy
    listens and its first health check of the ext_proc cluster has had time to run."""
    server = None
    if server_args:
        assert extproc_port is not None
        server = stack.enter_context(
            process(server_args, prefix.with_name(f"{prefix.name}-server.log"))
        )
        wait_port(extproc_port)
    config = prefix.with_name(f"{prefix.name}-envoy.yaml")
    config.write_text(yaml.safe_dump(envoy))
    envoy_args = [str(BIN / "envoy"), "-c", str(config), "--concurrency", "1"]
    envoy_args += ["--use-dynamic-base-id", "--log-level", "error"]
    stack.enter_context(process(envoy_args, prefix.with_name(f"{prefix.name}-envoy.log")))
    wait_port(listen)
    time.sleep(2.5)  # first health check of the ext_proc cluster
    return server


def measured(
    listen: int,
    server: subprocess.Popen[bytes] | None,
    connections: int,
    seconds: int,
    script: Path,
) -> dict[str, float]:
    """wrk's figures, with the server's CPU per request (`server_cpu_us`) when there is one."""
    before = cpu_seconds(server.pid) if server else 0.0
    figures = wrk(listen, connections, seconds, script)
    if server:
        used = cpu_seconds(server.pid) - before
        figures["server_cpu_us"] = used / max(figures["requests"], 1) * 1e6
    return figures


def median_run(found: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Per connection count and figure, the median over the rounds."""
    return {
        conns: {key: statistics.median(run[conns][key] for run in found) for key in found[0][conns]}
        for conns in found[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--rounds", type=int, default=3, help="stacks run interleaved this many times; medians"
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="a `cascade` executable of another checkout (e.g. the previous commit's venv): "
        "adds the stack `cascade-before`, measured in the same interleaved rounds",
    )
    parser.add_argument(
        "--stacks", default=",".join(STACKS), help="comma-separated subset of: " + ", ".join(STACKS)
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    stacks = [name for name in args.stacks.split(",") if name]
    unknown = set(stacks) - set(STACKS)
    if unknown or "floor" not in stacks:
        raise SystemExit(f"--stacks: unknown {sorted(unknown)} or no floor")
    if args.before is not None:
        stacks.insert(stacks.index("cascade") + 1 if "cascade" in stacks else 1, "cascade-before")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        script = post_script(tmp, body_4k())
        cascades: dict[str, Path] = {}
        if args.before is not None:
            cascades["cascade-before"] = args.before
        if "go-pass-through" in stacks:
            cascades["go-pass-through"] = build_go_anchor(tmp)
        runs: dict[str, list[dict[int, dict[str, float]]]] = {name: [] for name in stacks}
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits all stacks
            for name, found in runs.items():
                found.append(run_stack(name, tmp, args.seconds, script, cascades))
        results = {name: median_run(found) for name, found in runs.items()}
    print(json.dumps(results, indent=1))
    print_table(results, floor=True)
    print()
    for ours, base in (
        ("cascade", "pass-through"),
        ("cascade", "pass-through-h2"),
        ("cascade-grpcio", "pass-through"),
        ("pass-through-h2", "go-pass-through"),
        ("cascade", "go-pass-through"),
        ("cascade", "cascade-before"),
    ):
        if ours not in results or base not in results:
            continue
        ratio = results[ours][16]["rps"] / results[base][16]["rps"]
        print(f"{ours} / {base} req/s at 16 connections: {ratio:.1%}")


if __name__ == "__main__":
    main()
