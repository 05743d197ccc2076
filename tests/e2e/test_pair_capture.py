"""Pair capture through the real Envoy: weak requests mirrored to strong, both answers read
(the primary on the response path, the shadow on the per-attempt role with a mode override),
joined by x-request-id, redacted, written to the JSONL sink; a timed-out shadow is written as a
missing side; requests that were not mirrored leave nothing; then `cascade judge` labels the
pairs and `cascade eval` reads the labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cascade_dev.mock_backend import MockBackend, MockBackendThread

from extproc.cli.main import main
from tests.e2e.harness import Gateway, serving, wait_for

MIRROR_PERCENT = 50
REQUESTS = 16


def edit(document: dict[str, Any], gateway: Gateway) -> None:
    document["tiers"][0]["mirror"] = {"tier": "strong", "percent": MIRROR_PERCENT}
    document.setdefault("telemetry", {})["response_processing"] = True
    document["capture"] = {
        "tiers": ["weak"],
        "join_timeout_s": 1.5,
        "segment_header": "x-plan",
        "sink": {"kind": "jsonl", "path": str(gateway.workdir / "pairs.jsonl")},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("capture"), edit_config=edit, stream_delay_ms=10)
    yield from serving(gateway)


def pairs(stack: Gateway) -> dict[str, dict[str, Any]]:
    path = stack.workdir / "pairs.jsonl"
    if not path.exists():
        return {}
    return {p["id"]: p for p in map(orjson.loads, path.read_bytes().splitlines())}


def shadow_ids(stack: Gateway) -> set[str]:
    return {
        r.headers["x-request-id"]
        for r in stack.backends["strong"].requests
        if r.headers.get("x-cascade-shadow-of") == "weak"
    }


def send(stack: Gateway, count: int, prefix: str) -> list[str]:
    """Weak-routed requests, every other one streamed; their request ids."""
    ids = []
    for index in range(count):
        reply = stack.chat(
            f"{prefix} question {index}: what is a list?",
            headers={"x-plan": "pro"},
            stream=index % 2 == 1,
        )
        assert reply.status == 200, reply.body
        ids.append(reply.headers["x-request-id"])
    return ids


def test_mirrored_requests_are_captured_as_joined_pairs(stack: Gateway) -> None:
    stack.backends["strong"].clear_requests()
    ids = send(stack, REQUESTS, "plain")
    mirrored = set()

    def settled() -> bool:
        mirrored.update(shadow_ids(stack))
        return bool(mirrored) and mirrored <= set(pairs(stack))

    wait_for(settled, 20, "a pair for every mirrored request")
    wait_for(lambda: len(stack.backends["weak"].requests) >= REQUESTS, 10, "weak answers")
    found = pairs(stack)
    # nothing for the requests that were not mirrored, one pair for each that was
    assert set(found) == mirrored and mirrored < set(ids)
    for pair_id in mirrored:
        pair = found[pair_id]
        index = ids.index(pair_id)
        assert pair["messages"] == [
            {"role": "user", "content": f"plain question {index}: what is a list?"}
        ]
        assert pair["decision"]["tier"] == "weak" and pair["decision"]["classifier"] == "v7"
        assert pair["segment"] == {"user": "pro"}
        primary, shadow = pair["primary"], pair["shadow"]
        assert (primary["tier"], primary["model"], primary["status"]) == ("weak", "qwen3-4b", 200)
        assert (shadow["tier"], shadow["model"], shadow["status"]) == ("strong", "glm-5", 200)
        assert primary["text"].startswith("[weak] mock answer from backend weak for model qwen3")
        assert shadow["text"].startswith("[strong] mock answer from backend strong for model glm")
        assert primary["complete"] and shadow["complete"]
        assert primary["latency_ms"] > 0 and shadow["latency_ms"] > 0
        assert "missing" not in pair
    metrics = stack.metrics()
    assert f'cascade_capture_pairs_total{{result="complete"}} {float(len(mirrored))}' in metrics


def _one_mirrored(stack: Gateway, prefix: str, headers: dict[str, str]) -> str:
    """Send until Envoy mirrors one (bounded: 12 requests at 50 %), the id of a mirrored one.

    The shadow copy reaches its backend on its own time (Envoy does not wait for it): look for
    every id sent so far, not only the last one, and give a late shadow time under load."""
    before = shadow_ids(stack)
    sent: list[str] = []
    for attempt in range(12):
        reply = stack.chat(f"{prefix} {attempt}", headers=headers)
        assert reply.status == 200
        sent.append(reply.headers["x-request-id"])
        mirrored = [r for r in sent if r in shadow_ids(stack) - before]
        if mirrored:
            return mirrored[0]
    wait_for(lambda: any(r in shadow_ids(stack) - before for r in sent), 15, "a shadow")
    return next(r for r in sent if r in shadow_ids(stack) - before)


def test_text_is_redacted(stack: Gateway) -> None:
    request_id = _one_mirrored(
        stack,
        "mail me at jane.doe@example.com about",
        {"x-mock-content": "write to ops@example.org, key sk-abcdefghijklmnop1234"},
    )
    wait_for(lambda: request_id in pairs(stack), 10, "the pair")
    pair = pairs(stack)[request_id]
    assert "example.com" not in pair["messages"][0]["content"]
    assert "[email]" in pair["messages"][0]["content"]
    for side in ("primary", "shadow"):
        assert pair[side]["text"] == "write to [email], key [key]"


def test_a_shadow_that_times_out_is_written_as_missing(stack: Gateway) -> None:
    request_id = _one_mirrored(stack, "slow shadow", {"x-mock-fail-strong": "200@4000"})
    wait_for(lambda: request_id in pairs(stack), 10, "the pair with a missing side")
    pair = pairs(stack)[request_id]
    assert pair["shadow"] is None
    assert pair["missing"] == "shadow: no answer within 1.5 s"
    assert pair["primary"]["text"].startswith("[weak]")


def test_strong_requests_are_not_captured(stack: Gateway) -> None:
    reply = stack.chat("please refactor this module")
    assert reply.status == 200 and reply.headers["x-cascade-tier"] == "strong"
    # a weak request after it, mirrored, whose pair is written: the strong one's would be by now
    after = _one_mirrored(stack, "after strong", {})
    wait_for(lambda: after in pairs(stack), 10, "the later pair")
    wait_for(lambda: "cascade_capture_pending 0.0" in stack.metrics(), 5, "nothing pending")
    assert reply.headers["x-request-id"] not in pairs(stack)


def test_judge_labels_the_captured_pairs_and_eval_reads_them(
    stack: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = stack.workdir / "pairs.jsonl"
    wait_for(lambda: len(pairs(stack)) >= 3, 10, "pairs")
    with MockBackendThread(MockBackend("judge", ["glm-5"], judge="fair")) as judge:
        labels = tmp_path / "labels.jsonl"
        code = main(
            [
                "judge",
                str(source),
                "-o",
                str(labels),
                "--config",
                str(stack.config_path),
                "--judge-url",
                judge.url + "/v1",
                "--json",
                "--quiet",
            ]
        )
        assert code == 0
        summary = orjson.loads(capsys.readouterr().out)
    complete = [p for p in pairs(stack).values() if p.get("shadow") and p.get("primary")]
    assert summary["judged"] == len(complete)
    assert summary["unjudged"].get("missing_side", 0) == len(pairs(stack)) - len(complete)
    records = [orjson.loads(line) for line in labels.read_bytes().splitlines()]
    assert {r["label"] for r in records} <= {"weak", "strong"}
    assert all(r["evidence"]["weak_model"] == "qwen3-4b" for r in records)
    assert main(["eval", str(labels), "--config", str(stack.config_path)]) == 0
    assert f"{len(records)} records read; {len(records)} labelled" in capsys.readouterr().out
