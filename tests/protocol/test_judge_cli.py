"""`cascade judge` against the mock judge over real HTTP on loopback: verdicts, the position-bias
check, retries, timeouts, fatal answers, bad replies, budgets, resume, credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cascade_dev.mock import MockBackend, MockBackendThread

from extproc.cli.main import main
from extproc.config.snapshot import DEFAULT_CONFIG


@pytest.fixture
def judge() -> Iterator[MockBackendThread]:
    with MockBackendThread(MockBackend("judge", ["glm-5"], judge="fair")) as backend:
        yield backend


@pytest.fixture
def biased() -> Iterator[MockBackendThread]:
    with MockBackendThread(MockBackend("judge", ["glm-5"], judge="first")) as backend:
        yield backend


def pair(pair_id: str, weak: str, strong: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": pair_id,
        "messages": [{"role": "user", "content": f"question {pair_id}"}],
        "decision": {"tier": "weak", "rule": "default", "classifier": "v7"},
        "primary": {"tier": "weak", "model": "qwen3-4b", "text": weak, "status": 200},
        "shadow": None if strong is None else {"tier": "strong", "model": "glm-5", "text": strong},
        **extra,
    }


def write_pairs(path: Path, pairs: list[dict[str, Any]], extra_lines: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in pairs) + extra_lines)
    return path


def scored(count: int) -> list[dict[str, Any]]:
    """Pairs whose fair verdict is known: weak scores i % 10 + 1, strong 5."""
    return [
        pair(f"p{i}", f"weak answer [[score:{i % 10 + 1}]]", "strong answer [[score:5]]")
        for i in range(count)
    ]


def run_judge(
    backend: MockBackendThread, pairs: Path, out: Path, *args: str
) -> tuple[int, dict[str, Any]]:
    summary = out.with_name("summary.json")
    code = main(
        [
            "judge",
            str(pairs),
            "-o",
            str(out),
            "--judge-url",
            backend.url + "/v1",
            "--summary",
            str(summary),
            "--quiet",
            "--max-backoff",
            "0.05",
            *args,
        ]
    )
    return code, orjson.loads(summary.read_bytes())


def labels(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(orjson.loads, path.read_bytes().splitlines())}


def test_fair_judge_labels_and_eval_reads_them(
    judge: MockBackendThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(30), b"not json\n{}\n")
    out = tmp_path / "labels.jsonl"
    code, summary = run_judge(judge, pairs, out, "--swap-share", "1", "--seed", "3")
    assert code == 0
    found = labels(out)
    assert len(found) == 30
    for i in range(30):
        weak = i % 10 + 1
        record = found[f"p{i}"]
        assert record["label"] == ("strong" if weak < 5 else "weak")
        assert record["evidence"]["outcome"] == (
            "loss" if weak < 5 else "tie" if weak == 5 else "win"
        )
        assert record["evidence"]["weak_score"] == weak
        assert record["evidence"]["consistent"] is True
        assert record["tier"] == "weak" and record["classifier"] == "v7"
    assert summary["malformed_lines"] == 2
    assert summary["cheap_tier"] == {"win": 15, "tie": 3, "loss": 12, "loss_rate": 0.4}
    assert summary["swap"]["agreement"] == 1.0
    assert summary["judge"]["requests"] == 60 == len(judge.requests)
    shown_first = {r["evidence"]["shown_first"] for r in found.values()}
    assert shown_first == {"weak", "strong"}  # the order is randomised
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert "30 records read; 30 labelled (strong: 12, 40.0 %)" in capsys.readouterr().out


def test_position_biased_judge_is_caught_by_the_swap_check(
    biased: MockBackendThread, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(20))
    code, summary = run_judge(biased, pairs, tmp_path / "labels.jsonl", "--swap-share", "1")
    assert code == 0
    assert summary["swap"] == {
        "asked": 20,
        "judged_both_ways": 20,
        "agreement": 0.0,
        "first_shown_won": 1.0,
    }
    assert summary["cheap_tier"]["tie"] == 20  # position decided, so neither tier won


def test_swap_share_zero_asks_once(judge: MockBackendThread, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(10))
    _, summary = run_judge(judge, pairs, tmp_path / "labels.jsonl", "--swap-share", "0")
    assert summary["judge"]["requests"] == 10
    assert summary["swap"]["judged_both_ways"] == 0 and summary["swap"]["agreement"] is None


def test_bad_replies_and_missing_sides_stay_unjudged_and_the_run_goes_on(
    judge: MockBackendThread, tmp_path: Path
) -> None:
    bad = [
        pair("garbage", "a [[judge:garbage]]", "b"),
        pair("refuse", "a [[judge:refuse]]", "b"),
        pair("empty", "a", "b [[judge:empty]]"),
        pair("range", "a [[judge:outofrange]]", "b"),
        pair("missing", "a", None, missing="shadow: no answer within 30 s"),
        pair("dup", "a", "b"),
        pair("dup", "a", "b"),
    ]
    pairs = write_pairs(tmp_path / "pairs.jsonl", bad + scored(3))
    out = tmp_path / "labels.jsonl"
    code, summary = run_judge(judge, pairs, out, "--swap-share", "0")
    assert code == 0
    assert set(labels(out)) == {"dup", "p0", "p1", "p2"}
    assert summary["unjudged"] == {
        "missing_side": 1,
        "refused": 2,
        "unparseable": 2,
    }
    assert summary["duplicate_ids"] == 1
    unjudged = labels(tmp_path / "labels.jsonl.unjudged.jsonl")
    assert unjudged["missing"]["unjudged"] == "shadow missing (shadow: no answer within 30 s)"
    assert unjudged["empty"]["unjudged"] == "judge answered nothing"
    assert "outside" in unjudged["range"]["unjudged"]
    assert unjudged["garbage"]["primary"]["text"] == "a [[judge:garbage]]"  # as it was read
    assert len(judge.requests) == 8  # the missing pair and the duplicate were never sent


def test_retries_429_and_5xx_with_backoff(judge: MockBackendThread, tmp_path: Path) -> None:
    judge.script(["503", "429:0", "502", "500", "503"])
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(3))
    code, summary = run_judge(
        judge,
        pairs,
        tmp_path / "labels.jsonl",
        "--swap-share",
        "0",
        "--concurrency",
        "1",
        "--retries",
        "2",
    )
    assert code == 0
    # p0: 503, 429, 502 -> unjudged after 3 attempts; p1: 500, 503, 200; p2: 200
    assert summary["judged"] == 2
    assert summary["unjudged"] == {"judge_error": 1}
    assert summary["judge"]["retries"] == 4
    assert [r.status for r in judge.requests] == [503, 429, 502, 500, 503, 200, 200]
    unjudged = labels(tmp_path / "labels.jsonl.unjudged.jsonl")
    assert unjudged["p0"]["unjudged"] == "judge HTTP 502 after 3 attempt(s)"


def test_a_judge_timeout_leaves_one_pair_unjudged(judge: MockBackendThread, tmp_path: Path) -> None:
    judge.script(["200@3000"])
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(3))
    _, summary = run_judge(
        judge,
        pairs,
        tmp_path / "labels.jsonl",
        "--swap-share",
        "0",
        "--concurrency",
        "1",
        "--retries",
        "0",
        "--timeout",
        "0.5",
    )
    assert summary["unjudged"] == {"timeout": 1}
    assert summary["judged"] == 2


def test_unauthorised_judge_stops_the_run(judge: MockBackendThread, tmp_path: Path) -> None:
    judge.script(always="401")
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(20))
    out = tmp_path / "labels.jsonl"
    code, summary = run_judge(judge, pairs, out, "--concurrency", "2")
    assert code == 3
    assert "401" in summary["stopped"]
    assert out.read_bytes() == b""
    assert len(judge.requests) <= 4  # what was in flight, then nothing more


def test_max_pairs_then_resume_judges_only_the_rest(
    judge: MockBackendThread, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(10))
    out = tmp_path / "labels.jsonl"
    _, first = run_judge(judge, pairs, out, "--swap-share", "0", "--max-pairs", "3")
    assert (first["judged"], first["unjudged"]) == (3, {"budget": 7})
    assert len(judge.requests) == 3
    judge.clear_requests()
    _, second = run_judge(judge, pairs, out, "--swap-share", "0")
    assert (second["already_judged"], second["judged"], second["unjudged"]) == (3, 7, {})
    assert len(judge.requests) == 7
    assert len(out.read_bytes().splitlines()) == 10 == len(labels(out))
    assert (tmp_path / "labels.jsonl.unjudged.jsonl").read_bytes() == b""  # rewritten per run
    judge.clear_requests()
    _, third = run_judge(judge, pairs, out)
    assert third["already_judged"] == 10 and not judge.requests


def test_max_cost_stops_sending(judge: MockBackendThread, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(10))
    code, summary = run_judge(
        judge,
        pairs,
        tmp_path / "labels.jsonl",
        "--swap-share",
        "0",
        "--concurrency",
        "1",
        "--judge-price",
        "1000:0",
        "--max-cost",
        "0.5",
    )
    assert code == 0
    # a verdict costs ~0.3 (about 300 prompt tokens at 1000 per million): after two the
    # budget is spent, and nothing more is sent
    assert summary["judged"] == 2 and summary["unjudged"] == {"budget": 8}
    assert 0.5 <= summary["judge"]["cost"] < 1.0
    assert len(judge.requests) == 2


def test_api_key_from_the_environment_is_sent_and_never_printed(
    judge: MockBackendThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-secret-123")
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(2))
    run_judge(judge, pairs, tmp_path / "labels.jsonl", "--api-key-env", "MY_JUDGE_KEY")
    assert {r.headers.get("authorization") for r in judge.requests} == {"Bearer sk-test-secret-123"}
    printed = capsys.readouterr()
    assert "sk-test" not in printed.out + printed.err


def test_judging_with_the_weak_model_warns(
    judge: MockBackendThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(2))
    _, summary = run_judge(judge, pairs, tmp_path / "labels.jsonl", "--judge-model", "qwen3-4b")
    assert "cheap tier's own model" in capsys.readouterr().err
    assert summary["warnings"] and {r.model for r in judge.requests} == {"qwen3-4b"}


def test_concurrency_is_bounded(judge: MockBackendThread, tmp_path: Path) -> None:
    judge.script(["200@150"] * 12)
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(12))
    run_judge(judge, pairs, tmp_path / "labels.jsonl", "--swap-share", "0", "--concurrency", "3")
    connections = {r.connection for r in judge.requests}
    assert 1 < len(connections) <= 3  # one keep-alive connection per worker


def test_custom_rubric_and_bad_rubric(judge: MockBackendThread, tmp_path: Path) -> None:
    rubric = tmp_path / "rubric.txt"
    rubric.write_text(
        "Q {request}\n<answer_a>\n{answer_a}\n</answer_a>\n<answer_b>\n{answer_b}\n</answer_b>"
    )
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(4))
    code, summary = run_judge(judge, pairs, tmp_path / "l.jsonl", "--rubric", str(rubric))
    assert code == 0 and summary["judged"] == 4
    rubric.write_text("only {request}")
    with pytest.raises(SystemExit) as exit_info:
        run_judge(judge, pairs, tmp_path / "l2.jsonl", "--rubric", str(rubric))
    assert exit_info.value.code == 2


def test_the_judge_defaults_to_the_top_tier_of_the_config(
    judge: MockBackendThread, tmp_path: Path
) -> None:
    config = tmp_path / "cascade.yaml"
    config.write_text(
        DEFAULT_CONFIG.read_text().replace(
            "  - name: strong\n    model: glm-5\n",
            f"  - name: strong\n    model: glm-5\n    backends: [{{address: '127.0.0.1:{judge.port}'}}]\n",
        )
    )
    pairs = write_pairs(tmp_path / "pairs.jsonl", scored(2))
    out = tmp_path / "labels.jsonl"
    code = main(["judge", str(pairs), "-o", str(out), "--config", str(config), "--quiet"])
    assert code == 0 and len(labels(out)) == 2
    assert {r.model for r in judge.requests} == {"glm-5"}
    assert {r.path for r in judge.requests} == {"/v1/chat/completions"}
    with pytest.raises(SystemExit) as no_backend:
        main(["judge", str(pairs), "-o", str(out), "--quiet"])  # packaged config: no backends
    assert no_backend.value.code == 2
