"""The Redis Streams sink of pair capture against a real `redis-server` on loopback: pairs
written by the writer thread, bounded by MAXLEN, trimmed by the retention limit, and read back by
`cascade judge redis://...`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from cascade_dev.mock_backend import MockBackend, MockBackendThread

from extproc.cli.main import main
from extproc.config.capture import CaptureSettings, SinkSettings
from extproc.telemetry.pair_sink import PairWriter, RedisSink
from extproc.telemetry.redact import builtin_redact

ANSWER = orjson.dumps({"choices": [{"message": {"content": "answer [[score:7]]"}}]})


def record(index: int) -> dict[str, Any]:
    return {
        "id": f"pair-{index}",
        "messages": (("user", f"question {index} from me@example.com"),),
        "decision": {"tier": "weak", "rule": "default", "classifier": "v7"},
        "primary": {"tier": "weak", "model": "qwen3-4b", "status": 200, "raw": ANSWER},
        "shadow": {"tier": "strong", "model": "glm-5", "status": 200, "raw": ANSWER},
    }


def settings(url: str, stream: str, max_len: int = 1000) -> CaptureSettings:
    sink = SinkSettings(kind="redis", url=url, stream=stream, max_len=max_len)
    return CaptureSettings(tiers=frozenset({"weak"}), sink=sink, retention_s=3600)


def test_pairs_go_to_a_stream_and_judge_reads_them(
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chosen = settings(redis_url, "test:pairs")
    writer = PairWriter(chosen, RedisSink(chosen.sink, chosen.retention_s), builtin_redact)
    writer.start()
    for index in range(5):
        writer.put(record(index))
    writer.flush()
    writer.close()
    assert writer.written == 5 and writer.write_errors == 0
    client = redis.Redis.from_url(redis_url)
    entries = client.xrange("test:pairs")
    assert len(entries) == 5
    first = orjson.loads(entries[0][1][b"pair"])
    assert first["messages"][0]["content"] == "question 0 from [email]"
    assert first["primary"]["text"] == "answer [[score:7]]"
    client.xadd("test:pairs", {"pair": b"{not json"})  # a malformed entry is skipped, counted
    with MockBackendThread(MockBackend("judge", ["glm-5"], judge="fair")) as judge:
        labels = tmp_path / "labels.jsonl"
        source = redis_url + "?stream=test:pairs"
        code = main(
            [
                "judge",
                source,
                "-o",
                str(labels),
                "--judge-url",
                judge.url + "/v1",
                "--json",
                "--quiet",
            ]
        )
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["judged"], summary["malformed_lines"]) == (5, 1)
    assert summary["cheap_tier"]["tie"] == 5  # the same answer on both sides


def test_stream_length_and_retention_are_bounded(redis_url: str) -> None:
    chosen = settings(redis_url, "test:bounded", max_len=10)
    sink = RedisSink(chosen.sink, chosen.retention_s)
    client = redis.Redis.from_url(redis_url)
    for _ in range(20):
        sink.write([b'{"id": "x"}\n'] * 50)
    assert client.xlen("test:bounded") < 200  # approximate MAXLEN trims in whole nodes
    old = int((time.time() - 7200) * 1000)
    client.delete("test:old")
    for offset in range(5):
        client.xadd("test:old", {"pair": b"{}"}, id=f"{old + offset}-0")
    client.xadd("test:old", {"pair": b"{}"})
    aged = RedisSink(SinkSettings(kind="redis", url=redis_url, stream="test:old"), 3600)
    aged.retain(time.time())  # entries older than the retention (one hour) are gone
    assert client.xlen("test:old") == 1
    sink.close()
    aged.close()
