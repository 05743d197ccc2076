"""`cascade canary` against a real Prometheus: normal traffic steps the canary 10 -> 50 -> 100 %,
an injected 5xx burst on the canary's requests rolls it back to 0 %.

Real traffic flows through Envoy and `cascade serve` (which hot-reloads the weight the tool
writes). The per-version response series the rollout reads are exposed by a small endpoint of
this test, fed from the responses the clients get (version from `x-cascade-classifier`, status,
duration) under the metric names of the server's telemetry; Prometheus also scrapes Envoy's
`/stats/prometheus`. Windows are shortened by configuration (1 s scrapes, 4 s windows).
"""

from __future__ import annotations

import copy
import http.server
import json
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.config.snapshot import compile_config
from extproc.routing.choice import choose_classifier
from tests.e2e.harness import CASCADE, Gateway, wait_for

PROMETHEUS = shutil.which("prometheus")
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
VERSIONS = ("v7", "v8")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian package; `make test` installs it)"
)


class VersionMetrics:
    """Per classifier version: decisions, responses by status, a duration histogram."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.decisions = dict.fromkeys(VERSIONS, 0)
        self.responses = {(v, s): 0 for v in VERSIONS for s in ("200", "503")}
        self.buckets = {(v, le): 0 for v in VERSIONS for le in BUCKETS}
        self.count = dict.fromkeys(VERSIONS, 0)
        self.total = dict.fromkeys(VERSIONS, 0.0)

    def observe(self, version: str, status: int, seconds: float) -> None:
        if version not in VERSIONS:
            return
        with self.lock:
            self.decisions[version] += 1
            key = (version, str(status))
            self.responses[key] = self.responses.get(key, 0) + 1
            for le in BUCKETS:
                if seconds <= le:
                    self.buckets[(version, le)] += 1
            self.count[version] += 1
            self.total[version] += seconds

    def text(self) -> str:
        with self.lock:
            lines = ["# TYPE cascade_decisions_total counter"]
            lines += [
                f'cascade_decisions_total{{classifier="{v}"}} {n}'
                for v, n in self.decisions.items()
            ]
            lines.append("# TYPE cascade_responses_total counter")
            lines += [
                f'cascade_responses_total{{classifier="{v}",status="{s}"}} {n}'
                for (v, s), n in self.responses.items()
            ]
            lines.append("# TYPE cascade_response_duration_seconds histogram")
            for version in VERSIONS:
                for le in BUCKETS:
                    lines.append(
                        f'cascade_response_duration_seconds_bucket{{classifier="{version}",'
                        f'le="{le}"}} {self.buckets[(version, le)]}'
                    )
                lines.append(
                    f'cascade_response_duration_seconds_bucket{{classifier="{version}",le="+Inf"}}'
                    f" {self.count[version]}"
                )
                lines.append(
                    f'cascade_response_duration_seconds_count{{classifier="{version}"}} '
                    f"{self.count[version]}"
                )
                lines.append(
                    f'cascade_response_duration_seconds_sum{{classifier="{version}"}} '
                    f"{self.total[version]}"
                )
        return "\n".join(lines) + "\n"


def serve_metrics(metrics: VersionMetrics) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.text().encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusProcess:
    def __init__(self, workdir: Path, targets: dict[str, tuple[str, int]]) -> None:
        scrape = [
            {
                "job_name": job,
                "metrics_path": path,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
            for job, (path, port) in targets.items()
        ]
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}}
        config["scrape_configs"] = scrape  # type: ignore[assignment]
        (workdir / "prometheus.yml").write_text(json.dumps(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("ab")
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=self.log,
        )
        wait_for(self.ready, 30, "prometheus ready")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as reply:
            result: list[dict[str, Any]] = json.loads(reply.read())["data"]["result"]
            return result

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


class Traffic:
    """Clients in a thread: random users, each response recorded per version. `burst` makes
    the canary's users' requests fail (503 on every attempt) while it is set."""

    def __init__(self, gateway: Gateway, metrics: VersionMetrics) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.burst = threading.Event()
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        rng = random.Random(7)
        deadline = time.monotonic() + 80  # bounded in time …
        while not self.stop.is_set() and time.monotonic() < deadline and self.sent < 20_000:
            user = f"user-{rng.randrange(400)}"
            headers = {"x-user-id": user}
            if self.burst.is_set():
                snapshot = compile_config(self.gateway.config_path.read_text())
                if choose_classifier(snapshot, user).version == "v8":
                    headers["x-mock-fail"] = "503"
            started = time.monotonic()
            try:
                reply = self.gateway.chat("hello there", headers=headers)
            except OSError as exc:
                self.failures.append(str(exc))
                continue
            self.sent += 1  # … and in count
            self.metrics.observe(
                reply.headers.get("x-cascade-classifier", ""),
                reply.status,
                time.monotonic() - started,
            )
            time.sleep(0.015)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def with_rollout(prometheus_url: str) -> Any:
    def edit(document: dict[str, Any], gateway: Gateway) -> None:
        document["classifiers"]["v8"] = copy.deepcopy(document["classifiers"]["v7"])
        document["canary"] = {
            "version": "v8",
            "weight": 0,
            "key_header": "x-user-id",
            "rollout": {
                "prometheus": prometheus_url,
                "steps": [10, 50, 100],
                "step_interval_s": 3,
                "check_interval_s": 1,
                "min_requests": 5,
                "triggers": {
                    "error_rate": {"window_s": 4, "for_s": 2},
                    "p99_latency_s": {"window_s": 4, "for_s": 2},
                    "misroute_rate": False,
                },
            },
        }

    return edit


@pytest.fixture
def rollout_stack(tmp_path: Path) -> Iterator[tuple[Gateway, PrometheusProcess, Traffic]]:
    metrics = VersionMetrics()
    endpoint = serve_metrics(metrics)
    gateway: Gateway | None = None
    prometheus: PrometheusProcess | None = None
    traffic: Traffic | None = None
    try:
        # Prometheus needs Envoy's admin port, the config needs Prometheus's URL: start the
        # gateway with a placeholder URL, then point the config at the real one.
        (tmp_path / "stack").mkdir()
        gateway = Gateway(tmp_path / "stack", edit_config=with_rollout("http://127.0.0.1:1"))
        prometheus = PrometheusProcess(
            tmp_path,
            {
                "cascade": ("/metrics", endpoint.server_address[1]),
                "envoy": ("/stats/prometheus", gateway.admin_port),
            },
        )
        text = gateway.config_path.read_text().replace("http://127.0.0.1:1", prometheus.url)
        gateway.config_path.write_text(text)
        wait_for(lambda: len(prometheus.query("up == 1")) == 2, 20, "both targets scraped")
        traffic = Traffic(gateway, metrics)
        yield gateway, prometheus, traffic
    except BaseException:
        if gateway is not None:
            print(gateway.logs())
        raise
    finally:
        if traffic is not None:
            traffic.close()
        if prometheus is not None:
            prometheus.close()
        if gateway is not None:
            gateway.close()
        endpoint.shutdown()
        endpoint.server_close()


def run_canary(gateway: Gateway, timeout: float) -> tuple[int, str]:
    result = subprocess.run(
        [str(CASCADE), "canary", "--config", str(gateway.config_path), "--max-checks", "60"],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stderr.decode()


def classified(gateway: Gateway, users: range) -> set[str]:
    return {
        gateway.chat("hello", headers={"x-user-id": f"probe-{n}"}).headers["x-cascade-classifier"]
        for n in users
    }


def test_rollout_steps_on_normal_traffic_and_rolls_back_on_a_5xx_burst(
    rollout_stack: tuple[Gateway, PrometheusProcess, Traffic],
) -> None:
    gateway, prometheus, traffic = rollout_stack
    # Envoy's own series are there too (cluster stats of the tier the traffic goes to)
    wait_for(
        lambda: prometheus.query(
            'envoy_cluster_upstream_rq_completed{envoy_cluster_name="tier_weak"}'
        ),
        10,
        "envoy stats in prometheus",
    )

    # 1. normal traffic: 10 -> 50 -> 100 %, no rollback
    code, log = run_canary(gateway, timeout=45)
    assert code == 0, log
    assert "start at 10%" in log
    assert "step 10% -> 50%" in log
    assert "step 50% -> 100%" in log
    assert "rollout complete at 100%" in log
    assert "ROLLBACK" not in log
    assert "figures: error_rate=0 (limit 0.02), p99_latency_s=" in log
    canary = compile_config(gateway.config_path.read_text()).canary
    assert canary is not None and canary.weight == 100
    # the servers reloaded the file: every user is on v8 now
    wait_for(lambda: classified(gateway, range(8)) == {"v8"}, 10, "v8 for everyone")

    # 2. from 10 % again, with the canary's requests failing: rolled back to 0 %
    text = gateway.config_path.read_text().replace("weight: 100", "weight: 10")
    gateway.config_path.write_text(text)
    wait_for(lambda: classified(gateway, range(30)) == {"v7", "v8"}, 10, "10 % split reloaded")
    traffic.burst.set()
    started = time.monotonic()
    code, log = run_canary(gateway, timeout=45)
    took = time.monotonic() - started
    traffic.burst.clear()
    assert code == 1, log
    assert "ROLLBACK 10% -> 0%: error_rate" in log
    assert "(holding: error_rate)" in log  # it had to hold for its window first
    assert took < 30
    canary = compile_config(gateway.config_path.read_text()).canary
    assert canary is not None and canary.weight == 0
    wait_for(lambda: classified(gateway, range(8)) == {"v7"}, 10, "v7 for everyone")
    assert traffic.sent > 200
    assert not traffic.failures
