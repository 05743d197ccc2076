"""Pair capture without sockets: the joiner, the taps, answer text, redaction and cutting, the
JSONL sink's rotation and retention, the bounded queue, the config section."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.config.capture import CaptureSettings, SinkSettings
from extproc.config.snapshot import ConfigError, Snapshot, compile_config
from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.classify import Decision
from extproc.routing.capture import PairJoiner, answer_text, sampled
from extproc.routing.capture_upstream import SHADOW_MODE
from extproc.routing.observer import RequestInfo
from extproc.routing.upstream import UpstreamProcessor
from extproc.telemetry.pair_sink import JsonlSink, PairWriter, cut, finish_pair
from extproc.telemetry.redact import builtin_redact
from tests.protocol.streams import request_headers

CONFIG = """
schema: 1
tiers:
  - {name: weak, model: qwen3-4b, mirror: {tier: strong, percent: 10}}
  - {name: strong, model: glm-5}
classifier: v1
classifiers:
  v1: {default: weak, rules: []}
server: {rewrite_model: true}
telemetry: {response_processing: true}
capture: {tiers: [weak], join_timeout_s: 5, max_pending: 3, segment_header: X-Plan}
"""


@pytest.fixture
def snapshot() -> Snapshot:
    return compile_config(CONFIG)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chat(text: str = "hi") -> ChatRequest:
    found = parse_chat(orjson.dumps({"messages": [{"role": "user", "content": text}]}), 1 << 20)
    assert isinstance(found, ChatRequest)
    return found


def info(request_id: str) -> RequestInfo:
    return RequestInfo(request_id=request_id, headers={"x-plan": "pro"})


WEAK = Decision(tier="weak", classifier="v1", rule="default", reason="default")
STRONG = Decision(tier="strong", classifier="v1", rule="kw", reason="kw")
ANSWER = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "four"}}]})


def joiner() -> tuple[PairJoiner, list[dict[str, Any]], Clock]:
    emitted: list[dict[str, Any]] = []
    clock = Clock()
    return PairJoiner(emitted.append, clock), emitted, clock


def test_both_sides_make_one_pair_in_any_order(snapshot: Snapshot) -> None:
    pairs, emitted, _ = joiner()
    for request_id, shadow_first in (("a", True), ("b", False)):
        primary = pairs.primary_tap(snapshot, info(request_id), WEAK, chat("2+2?"))
        assert primary is not None
        shadow = pairs.shadow_tap(snapshot, request_id, "strong", "glm-5")
        assert shadow is not None
        taps = [shadow, primary] if shadow_first else [primary, shadow]
        for tap in taps:
            tap.feed(ANSWER)
            tap.status = 200
            tap.done(complete=True, tokens_out=1)
    assert [p["id"] for p in emitted] == ["a", "b"]
    pair = emitted[0]
    assert pair["decision"] == {"tier": "weak", "rule": "default", "classifier": "v1"}
    assert pair["segment"] == {"user": "pro"}
    assert pair["primary"]["raw"] == ANSWER and pair["shadow"]["model"] == "glm-5"
    assert pairs.pending == 0 and pairs.counts["pairs"] == 2


def test_unmirrored_and_other_tiers_leave_nothing(snapshot: Snapshot) -> None:
    pairs, emitted, _ = joiner()
    assert pairs.primary_tap(snapshot, info("s"), STRONG, chat()) is None
    primary = pairs.primary_tap(snapshot, info("u"), WEAK, chat())
    assert primary is not None
    primary.feed(ANSWER)  # no shadow seen at the first chunk: nothing is collected
    assert primary.buffer is None
    primary.done(complete=True)
    assert not emitted and pairs.pending == 0 and pairs.counts["unmirrored"] == 1


def test_a_client_sent_shadow_header_captures_nothing(snapshot: Snapshot) -> None:
    pairs, _, _ = joiner()
    processor = UpstreamProcessor(snapshot, pairs=pairs)
    answer = processor.handle(request_headers(extra={"x-cascade-shadow-of": "weak"}))
    assert not answer.HasField("mode_override")
    assert processor.shadow is None and pairs.counts["shadow_unexpected"] == 1
    pairs.primary_tap(snapshot, info("req-1"), WEAK, chat())
    answer = UpstreamProcessor(snapshot, pairs=pairs).handle(
        request_headers(extra={"x-cascade-shadow-of": "weak"})
    )
    assert answer == SHADOW_MODE  # expected: the response of this attempt is asked for


def test_missing_side_after_the_join_timeout(snapshot: Snapshot) -> None:
    pairs, emitted, clock = joiner()
    primary = pairs.primary_tap(snapshot, info("slow"), WEAK, chat())
    assert primary is not None and pairs.shadow_tap(snapshot, "slow", "strong", "glm-5")
    primary.feed(ANSWER)
    primary.done(complete=True)
    clock.now += 4.9
    pairs.expire()
    assert not emitted
    clock.now += 0.2
    pairs.expire()
    assert emitted[0]["shadow"] is None
    assert emitted[0]["missing"] == "shadow: no answer within 5 s"
    assert pairs.counts["pairs_missing_side"] == 1


def test_drain_writes_half_pairs_at_shutdown(snapshot: Snapshot) -> None:
    pairs, emitted, _ = joiner()
    half = pairs.primary_tap(snapshot, info("half"), WEAK, chat())
    assert half is not None and pairs.shadow_tap(snapshot, "half", "strong", "glm-5")
    half.feed(ANSWER)
    half.done(complete=True)
    assert pairs.primary_tap(snapshot, info("waiting"), WEAK, chat())  # never mirrored
    pairs.drain()
    assert [p["id"] for p in emitted] == ["half"]
    assert emitted[0]["missing"] == "shadow: the server stopped before it ended"
    assert pairs.pending == 0


def test_pending_is_bounded_and_duplicate_ids_refused(snapshot: Snapshot) -> None:
    pairs, _, _ = joiner()
    taps = [pairs.primary_tap(snapshot, info(f"r{i}"), WEAK, chat()) for i in range(5)]
    assert [t is not None for t in taps] == [True, True, True, False, False]
    assert pairs.counts["dropped_pending"] == 2
    assert pairs.primary_tap(snapshot, info("r0"), WEAK, chat()) is None
    assert pairs.counts["duplicate_id"] == 1


def test_a_long_prompt_is_cut_while_its_pair_waits(snapshot: Snapshot) -> None:
    pairs, _, _ = joiner()
    long = "x" * 70_000  # over capture.max_text_bytes (64 KiB)
    primary = pairs.primary_tap(snapshot, info("long"), WEAK, chat(long))
    assert primary is not None and pairs.shadow_tap(snapshot, "long", "strong", "glm-5")
    waiting = pairs._pending["long"].record
    assert len(waiting["messages"][0][1]) == 65_536 and waiting["messages_truncated"]
    settings = snapshot.capture
    line = orjson.loads(finish_pair(dict(waiting, primary=None, shadow=None), settings, str))
    assert line["messages_truncated"] is True
    assert len(line["messages"][0]["content"]) == 65_536
    short = orjson.loads(finish_pair({"messages": (("user", "hi"),)}, settings, str))
    assert "messages_truncated" not in short


def test_a_reused_request_id_drops_the_pair(snapshot: Snapshot) -> None:
    pairs, emitted, clock = joiner()
    victim = pairs.primary_tap(snapshot, info("same"), WEAK, chat("mine"))
    assert victim is not None
    assert pairs.primary_tap(snapshot, info("same"), WEAK, chat("theirs")) is None
    shadow = pairs.shadow_tap(snapshot, "same", "strong", "glm-5")
    assert shadow is not None
    assert pairs.shadow_tap(snapshot, "same", "strong", "glm-5") is None  # a second shadow
    for tap in (victim, shadow):
        tap.feed(ANSWER)
        tap.done(complete=True)
    assert not emitted and pairs.pending == 0
    assert pairs.counts["dropped_conflict"] == 1 and pairs.counts["duplicate_id"] == 2
    # the same when the join times out
    pairs.primary_tap(snapshot, info("again"), WEAK, chat())
    assert pairs.shadow_tap(snapshot, "again", "strong", "glm-5")
    assert pairs.shadow_tap(snapshot, "again", "strong", "glm-5") is None
    clock.now += 10
    pairs.expire()
    assert not emitted and pairs.counts["dropped_conflict"] == 2


def test_sample_share_by_request_id() -> None:
    ids = [f"id-{i}" for i in range(4000)]
    share = sum(sampled(i, 25) for i in ids) / len(ids)
    assert 0.22 < share < 0.28
    assert all(sampled(i, 100) for i in ids[:10]) and not any(sampled(i, 0) for i in ids[:50])


def test_answer_text_of_json_sse_and_garbage() -> None:
    assert answer_text(ANSWER) == "four"
    refusal = orjson.dumps({"choices": [{"message": {"content": None, "refusal": "no"}}]})
    assert answer_text(refusal) == "no"
    events = b"".join(
        b"data: " + orjson.dumps({"choices": [{"delta": {"content": piece}}]}) + b"\n\n"
        for piece in ("fo", "ur")
    )
    assert answer_text(events + b"data: [DONE]\n\n") == "four"
    assert answer_text(b"<html>bad gateway</html>") is None


def test_finish_pair_redacts_cuts_and_drops_raw_bytes() -> None:
    settings = CaptureSettings(tiers=frozenset({"weak"}), max_text_bytes=256)
    long_answer = orjson.dumps({"choices": [{"message": {"content": "é" * 300}}]})
    record = {
        "id": "x",
        "messages": (("user", "mail bob@example.com please"),),
        "primary": {"tier": "weak", "raw": long_answer, "raw_truncated": False},
        "shadow": {"tier": "strong", "raw": None},
    }
    pair = orjson.loads(finish_pair(record, settings, builtin_redact))
    assert pair["messages"] == [{"role": "user", "content": "mail [email] please"}]
    assert pair["primary"]["text"] == "é" * 128 and pair["primary"]["truncated"] is True
    assert pair["shadow"]["text"] is None and "text_missing" in pair["shadow"]
    assert "raw" not in pair["primary"]
    assert cut("abc", 10) == ("abc", False)


def test_jsonl_sink_rotates_by_size_and_enforces_retention(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    sink = JsonlSink(SinkSettings(path=str(path), max_bytes=1024, backups=2), retention_s=3600)
    line = b"x" * 400 + b"\n"
    sink.write([line] * 7)  # 2 lines per file: live + .1 + .2, the oldest dropped
    assert path.exists() and path.with_name("pairs.jsonl.1").exists()
    assert path.with_name("pairs.jsonl.2").exists()
    assert not path.with_name("pairs.jsonl.3").exists()
    old = time.time() - 7200
    os.utime(path.with_name("pairs.jsonl.2"), (old, old))
    sink.retain(time.time())
    assert not path.with_name("pairs.jsonl.2").exists()
    assert path.with_name("pairs.jsonl.1").exists()
    sink._opened = old  # the live file is older than the retention: rotated away
    sink.retain(time.time())
    assert path.stat().st_size == 0 and path.with_name("pairs.jsonl.1").exists()
    sink.close()


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    settings = CaptureSettings(
        tiers=frozenset({"weak"}),
        queue_size=2,
        sink=SinkSettings(path=str(tmp_path / "p.jsonl")),
    )
    writer = PairWriter(settings, JsonlSink(settings.sink, 3600), builtin_redact)
    for index in range(5):  # the writer thread is not running: the queue fills up
        writer.put({"id": str(index)})
    assert writer.dropped == 3
    writer.start()
    writer.flush()
    writer.close()
    assert len((tmp_path / "p.jsonl").read_bytes().splitlines()) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("capture: {tiers: [strong]}", "tier strong has no mirror"),
        ("capture: {tiers: [mid]}", "expected one of weak, strong"),
        ("server: {rewrite_model: false}", "needs server.rewrite_model"),
        ("telemetry: {response_processing: false}", "needs telemetry.response_processing"),
        ("capture: {tiers: [weak], sink: {kind: redis, url: x}}", "redis://"),
        ("capture: {tiers: [weak], sample: 150}", "percentage"),
        ("capture: {tiers: [weak], bogus: 1}", "unknown key"),
    ],
)
def test_bad_capture_config_is_refused(change: str, message: str) -> None:
    key = change.split(":", maxsplit=1)[0]
    lines = [line for line in CONFIG.splitlines() if not line.startswith(key + ":")]
    with pytest.raises(ConfigError, match=message):
        compile_config("\n".join([*lines, change]))


def test_capture_is_off_by_default_and_renders_the_mode_override_only_when_on() -> None:
    from extproc.gateway.filters import forwarded_headers, upstream_ext_proc_filter

    on = compile_config(CONFIG)
    off = compile_config(CONFIG.replace("capture: {tiers: [weak]", "capture: {tiers: []"))
    assert not off.capture.enabled and on.capture.enabled
    assert upstream_ext_proc_filter(on, rewrite=True)["typed_config"]["allow_mode_override"]
    assert "allow_mode_override" not in upstream_ext_proc_filter(off, rewrite=True)["typed_config"]
    assert {"exact": "x-plan"} in forwarded_headers(on)["allowed_headers"]["patterns"]
