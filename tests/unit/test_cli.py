"""The `cascade` CLI through its console script, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CASCADE = Path(sys.executable).with_name("cascade")


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(CASCADE), *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_classify_korean_refactor_is_strong() -> None:
    body = '{"messages":[{"role":"user","content":"이 모듈을 리팩터링 해줘"}]}'.encode()
    result = run("classify", "-", stdin=body)
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["tier"] == "strong"
    assert decision["keywords"] == ["리팩터"]
    assert decision["classifier"] == "v7"


def test_classify_explain_line(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"messages":[{"role":"user","content":"hi"}]}')
    result = run("classify", "--explain", str(body))
    assert result.returncode == 0
    assert result.stdout.decode().startswith("weak  (classifier v7, rule default")


def test_classify_invalid_body_prints_openai_error() -> None:
    result = run("classify", stdin=b"{oops")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["type"] == "invalid_request_error"


def test_classify_unknown_version() -> None:
    result = run("classify", "--classifier", "v99", stdin=b'{"messages":[]}')
    assert result.returncode == 2
    assert b"unknown classifier 'v99'" in result.stderr


def test_check_config_ok_and_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tiers: [{name: weak}]\nclassifier: v1\n"
        "classifiers:\n  v1:\n    default: weak\n    rules: [{kind: keyword, tier: strong, keywords: [x]}]\n"
    )
    result = run("check-config", str(bad))
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "bad.yaml: classifiers.v1.rules[0].tier" in message
    assert "expected one of weak" in message
    good = run("check-config", str(Path("extproc/defaults/cascade.yaml")))
    assert good.returncode == 0
    assert b"tiers weak < strong" in good.stdout


def test_classify_with_config_env(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "tiers: [{name: weak}, {name: strong}]\nclassifier: x\n"
        "classifiers:\n  x: {default: strong}\n"
    )
    result = run("classify", "--config", str(conf), stdin=b'{"messages":[]}')
    assert json.loads(result.stdout)["tier"] == "strong"


def test_version_matches_the_installed_distribution() -> None:
    import importlib.metadata

    result = run("--version")
    assert result.returncode == 0
    expected = importlib.metadata.version("cascade-router")
    assert result.stdout.decode().strip() == f"cascade {expected}"
