"""`cascade canary`: the rollout controller with a fake clock and a scripted Prometheus, the
config rewrite, and the Prometheus client against a stub HTTP server."""

from __future__ import annotations

import http.server
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.config.editing import edit_scalars, write_atomically
from extproc.config.snapshot import DEFAULT_CONFIG, compile_config
from extproc.rollout.controller import (
    EXIT_COMPLETE,
    EXIT_ROLLED_BACK,
    RolloutController,
    describe_once,
)
from extproc.rollout.prometheus import Prometheus, PrometheusError, _number
from extproc.rollout.target import ConfigFileTarget

CONFIG = DEFAULT_CONFIG.read_text().replace(
    "classifiers:\n  v7:", "classifiers:\n  v8: {default: weak}\n  v7:", 1
) + (
    "canary:\n"
    "  version: v8\n"
    "  weight: 0          # the canary's share, percent\n"
    "  key_header: x-user-id\n"
    "  rollout:\n"
    "    steps: [10, 50, 100]\n"
    "    step_interval_s: 60\n"
    "    check_interval_s: 10\n"
    "    min_requests: 20\n"
    "    triggers:\n"
    "      error_rate: {window_s: 30, for_s: 30}\n"
    "      p99_latency_s: {window_s: 30, for_s: 30}\n"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakePrometheus:
    """Answers by the metric in the query; `values[name](now)`; None = no sample."""

    def __init__(self, clock: Clock, **values: Callable[[float], float | None]) -> None:
        self.clock = clock
        self.values = values
        self.queries: list[str] = []
        self.down = False

    def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        if self.down:
            raise PrometheusError("connection refused")
        for name, value in self.values.items():
            if name in promql:
                return value(self.clock.now)
        return None


def healthy(clock: Clock, **overrides: Callable[[float], float | None]) -> FakePrometheus:
    values: dict[str, Callable[[float], float | None]] = {
        "cascade_responses_total": lambda now: 0.001,
        "histogram_quantile": lambda now: 2.5,
        "cascade_misroute_suspected_total": lambda now: None,
        "cascade_decisions_total": lambda now: 500.0,
    }
    values.update(overrides)
    return FakePrometheus(clock, **values)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cascade.yaml"
    path.write_text(CONFIG)
    return path


def controller(config: Path, prometheus: FakePrometheus, clock: Clock) -> RolloutController:
    snapshot = compile_config(config.read_text())
    assert snapshot.canary is not None
    return RolloutController(
        snapshot.canary.rollout,
        "v8",
        ConfigFileTarget(config),
        prometheus,  # type: ignore[arg-type]
        clock=clock,
        sleep=clock.sleep,
    )


def weight_of(config: Path) -> float:
    canary = compile_config(config.read_text()).canary
    assert canary is not None
    return canary.weight


def test_healthy_canary_steps_10_50_100_then_completes(config: Path) -> None:
    clock = Clock()
    run = controller(config, healthy(clock), clock)
    assert run.run(max_checks=100) == EXIT_COMPLETE
    steps = [(e.action, e.weight_to) for e in run.events if e.action != "check"]
    assert steps == [("start", 10), ("step", 50), ("step", 100), ("complete", 100)]
    assert weight_of(config) == 100
    # every step was logged with its figures
    step = next(e for e in run.events if e.action == "step")
    assert "error_rate=0.001" in step.message
    assert "p99_latency_s=2.5" in step.message
    assert "misroute_rate=no data" in step.message
    # the version and windows were substituted
    assert any('classifier="v8"' in q and "[30s]" in q for q in run.prometheus.queries)  # type: ignore[attr-defined]
    # the comment on the weight line survived every rewrite
    assert "weight: 100          # the canary's share, percent" in config.read_text()


def test_error_burst_rolls_back_once_it_held_for_its_window(config: Path) -> None:
    clock = Clock()
    burst_at = clock.now + 75  # during the 50 % step
    prometheus = healthy(
        clock, cascade_responses_total=lambda now: 0.09 if now >= burst_at else 0.001
    )
    run = controller(config, prometheus, clock)
    assert run.run(max_checks=100) == EXIT_ROLLED_BACK
    rollback = run.events[-1]
    assert rollback.action == "rollback"
    assert rollback.weight_from == 50
    assert weight_of(config) == 0
    assert "ROLLBACK 50% -> 0%: error_rate 0.09 > 0.02 for 30s" in rollback.message
    assert rollback.check is not None
    # it held for 30 s: first seen at the check after the burst, fired 3 checks later
    assert rollback.check.time - burst_at >= 30


def test_a_short_spike_does_not_roll_back(config: Path) -> None:
    clock = Clock()
    start = clock.now
    prometheus = healthy(
        clock,
        cascade_responses_total=lambda now: 0.5 if start + 20 <= now < start + 40 else 0.001,
    )
    run = controller(config, prometheus, clock)
    assert run.run(max_checks=100) == EXIT_COMPLETE
    assert any("holding: error_rate" in e.message for e in run.events)


def test_latency_trigger(config: Path) -> None:
    clock = Clock()
    run = controller(config, healthy(clock, histogram_quantile=lambda now: 22.0), clock)
    assert run.run(max_checks=100) == EXIT_ROLLED_BACK
    assert "p99_latency_s 22 > 15" in run.events[-1].message
    assert run.events[-1].weight_from == 10


def test_trigger_with_for_zero_fires_at_first_breach(config: Path) -> None:
    text = config.read_text().replace(
        "      p99_latency_s: {window_s: 30, for_s: 30}\n",
        "      p99_latency_s: {window_s: 30, for_s: 30}\n"
        "      misroute_rate: {window_s: 86400, for_s: 0}\n",
    )
    config.write_text(text)
    clock = Clock()
    run = controller(
        config, healthy(clock, cascade_misroute_suspected_total=lambda now: 0.12), clock
    )
    assert run.run(max_checks=100) == EXIT_ROLLED_BACK
    assert "misroute_rate" in run.events[-1].message
    assert len([e for e in run.events if e.action == "check"]) == 0


def test_too_little_traffic_is_neither_judged_nor_promoted(config: Path) -> None:
    clock = Clock()
    prometheus = healthy(
        clock,
        cascade_responses_total=lambda now: 1.0,  # 100 % errors, but only 5 requests
        cascade_decisions_total=lambda now: 5.0,
    )
    run = controller(config, prometheus, clock)
    with pytest.raises(TimeoutError):
        run.run(max_checks=20)
    assert weight_of(config) == 10  # started, never stepped, never rolled back
    assert "waiting for traffic: 5 of 20 canary requests" in run.events[-1].message
    assert "n/a (5 of 20 requests)" in run.events[-1].message


def test_prometheus_down_holds_the_step(config: Path) -> None:
    clock = Clock()
    prometheus = healthy(clock)
    prometheus.down = True
    run = controller(config, prometheus, clock)
    with pytest.raises(TimeoutError):
        run.run(max_checks=12)
    assert weight_of(config) == 10
    assert "prometheus incomplete" in run.events[-1].message


def test_resume_from_the_current_weight(config: Path) -> None:
    config.write_text(config.read_text().replace("weight: 0 ", "weight: 50 "))
    clock = Clock()
    run = controller(config, healthy(clock), clock)
    assert run.run(max_checks=100) == EXIT_COMPLETE
    assert [(e.action, e.weight_to) for e in run.events if e.action != "check"] == [
        ("start", 50),
        ("step", 100),
        ("complete", 100),
    ]


def test_promote_swaps_stable_and_canary(config: Path) -> None:
    clock = Clock()
    run = controller(config, healthy(clock), clock)
    assert run.run(promote=True, max_checks=100) == EXIT_COMPLETE
    snapshot = compile_config(config.read_text())
    assert snapshot.stable == "v8"
    assert snapshot.canary is not None
    assert (snapshot.canary.version, snapshot.canary.weight) == ("v7", 0)


# -- the file ----------------------------------------------------------------------------------


def test_edit_scalars_keeps_everything_else() -> None:
    text = "# head\ncanary: {version: v8, weight: 10}  # tail\nclassifier: v7\n"
    assert edit_scalars(text, {("canary", "weight"): "50"}) == (
        "# head\ncanary: {version: v8, weight: 50}  # tail\nclassifier: v7\n"
    )
    with pytest.raises(ValueError, match=r"canary\.weight must be set"):
        edit_scalars("canary: {version: v8}\n", {("canary", "weight"): "50"})


def test_write_atomically_replaces_the_inode_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\n")
    os.chmod(path, 0o640)
    before = path.stat().st_ino
    write_atomically(path, "a: 2\n")
    assert path.read_text() == "a: 2\n"
    assert path.stat().st_ino != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


def test_target_runs_exec_after_each_write_and_dry_run_writes_nothing(
    config: Path, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    target = ConfigFileTarget(
        config, exec_command=f'echo "$CASCADE_CANARY_WEIGHT $CASCADE_CONFIG_FILE" >> {log}'
    )
    target.set(12.5)
    assert weight_of(config) == 12.5
    assert log.read_text() == f"12.5 {config}\n"
    before = config.read_text()
    dry = ConfigFileTarget(config, dry_run=True)
    dry.set(50)
    assert config.read_text() == before
    assert dry.current() == 50
    failing = ConfigFileTarget(config, exec_command="exit 3")
    with pytest.raises(RuntimeError, match="exited 3"):
        failing.set(20)


# -- the Prometheus client -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"resultType": "vector", "result": []}, None),
        ({"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.5"]}]}, 0.5),
        (
            {
                "resultType": "vector",
                "result": [{"value": [1, "0.1"]}, {"value": [1, "0.3"]}, {"value": [1, "NaN"]}],
            },
            0.3,
        ),
        ({"resultType": "vector", "result": [{"value": [1, "NaN"]}]}, None),
        ({"resultType": "scalar", "result": [1, "7"]}, 7.0),
        ({"resultType": "matrix", "result": []}, None),
    ],
)
def test_number_from_query_results(data: dict[str, Any], expected: float | None) -> None:
    assert _number(data) == expected


class _Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if "bad" in self.path:
            body = json.dumps({"status": "error", "error": "parse error"}).encode()
            self.send_response(400)
        else:
            body = json.dumps(
                {"status": "success", "data": {"resultType": "scalar", "result": [0, "42"]}}
            ).encode()
            self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_client(stub: str) -> None:
    assert Prometheus(stub).query("up") == 42.0
    with pytest.raises(PrometheusError, match="HTTP 400"):
        Prometheus(stub).query("bad{")
    with pytest.raises(PrometheusError):
        Prometheus("http://127.0.0.1:1", timeout=1).query("up")


def test_max_checks_gives_up_without_waiting_after_the_last_check(config: Path) -> None:
    clock = Clock()
    prometheus = healthy(clock)
    prometheus.down = True
    run = controller(config, prometheus, clock)
    started = clock.now
    with pytest.raises(TimeoutError):
        run.run(max_checks=1)
    assert clock.now == started  # one check, no check interval slept after it
    with pytest.raises(TimeoutError):
        run.run(max_checks=3)
    assert clock.now == started + 2 * 10  # two waits between three checks (check_interval_s 10)


def test_once_says_whether_prometheus_answered(config: Path) -> None:
    clock = Clock()
    prometheus = healthy(clock)
    lines, complete = describe_once(controller(config, prometheus, clock), 10)
    assert complete and any(line.startswith("error_rate=") for line in lines)
    prometheus.down = True
    lines, complete = describe_once(controller(config, prometheus, clock), 10)
    assert not complete and all("prometheus error" in line for line in lines)
