"""`cascade judge --metrics-file / --push-gateway`: the judged verdicts as Prometheus series,
checked by `promtool check metrics` and pushed to a real Pushgateway on loopback."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cascade_dev.mock import MockBackend, MockBackendThread

from extproc.cli.main import main
from extproc.tuning.judge_metrics import VerdictCounts, exposition, verdict_key

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not Path(PUSHGATEWAY).exists():
        pytest.fail("prometheus-pushgateway missing: `make sysdeps` installs it (Debian)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("pushgateway")
    process = subprocess.Popen(
        [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}",
         f"--persistence.file={workdir / 'data'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if get(port, "/-/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("pushgateway did not start")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def pair(index: int, weak: int, text: str, segment: str) -> dict[str, Any]:
    return {
        "id": f"m{index}",
        "messages": [{"role": "user", "content": text}],
        "decision": {"tier": "weak", "rule": "default", "classifier": "v7"},
        "segment": {"user": segment},
        "primary": {"tier": "weak", "model": "qwen3-4b", "text": f"w [[score:{weak}]]"},
        "shadow": {"tier": "strong", "model": "glm-5", "text": "s [[score:5]]"},
    }


def test_verdicts_are_pushed_and_valid(pushgateway: int, tmp_path: Path) -> None:
    pairs = [pair(i, 2 if i % 4 == 0 else 8, "짧은 질문" if i % 2 else "a question", "pro")
             for i in range(12)]  # fmt: skip
    source = tmp_path / "pairs.jsonl"
    source.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in pairs))
    metrics_file = tmp_path / "cascade_judge.prom"
    with MockBackendThread(MockBackend("judge", ["glm-5"], judge="fair")) as judge:
        code = main([
            "judge", str(source), "-o", str(tmp_path / "labels.jsonl"), "--quiet",
            "--judge-url", judge.url + "/v1", "--swap-share", "1",
            "--metrics-file", str(metrics_file),
            "--push-gateway", f"http://127.0.0.1:{pushgateway}",
        ])  # fmt: skip
    assert code == 0
    text = metrics_file.read_text()
    if shutil.which("promtool"):
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
    status, scraped = get(pushgateway, "/metrics")
    assert status == 200
    loss = (
        'cascade_judge_verdicts_total{classifier="v7",instance="",job="cascade_judge",'
        'lang="latin",length="<100",outcome="loss",segment="pro",tier="weak"} 3'
    )
    assert loss in scraped
    assert 'outcome="win",segment="pro",tier="weak"} 3' in scraped  # Korean: i odd, never loss
    assert 'cascade_judge_swap_checks_total{instance="",job="cascade_judge",result="agree"} 12' in (
        scraped
    )


def test_push_failure_is_exit_4(tmp_path: Path) -> None:
    source = tmp_path / "pairs.jsonl"
    source.write_bytes(orjson.dumps(pair(0, 8, "q", "x")) + b"\n")
    with MockBackendThread(MockBackend("judge", ["glm-5"], judge="fair")) as judge:
        code = main([
            "judge", str(source), "-o", str(tmp_path / "labels.jsonl"), "--quiet",
            "--judge-url", judge.url + "/v1", "--push-gateway", f"http://127.0.0.1:{free_port()}",
        ])  # fmt: skip
    assert code == 4
    assert len((tmp_path / "labels.jsonl").read_bytes().splitlines()) == 1  # labels kept


def test_segment_values_are_bounded_and_escaped() -> None:
    def labelled(segment: str) -> dict[str, Any]:
        return {
            "messages": [{"role": "user", "content": "q"}],
            "segment": {"user": segment},
            "evidence": {"label_rule": "judge", "outcome": "loss", "cheap_tier": "weak"},
        }

    counts = VerdictCounts(max_segments=2).add_all(
        [labelled('a"b\nc'), labelled("two"), labelled("three"), labelled("four")]
    )
    text = exposition(counts, unjudged={"budget": 2}, cost=None, finished=0.0)
    assert 'segment="a\\"b\\nc"' in text
    assert 'segment="(other)"' in text and 'segment="three"' not in text
    assert 'cascade_judge_unjudged{kind="budget"} 2' in text
    assert verdict_key({"evidence": {"label_rule": "oracle"}}) is None
