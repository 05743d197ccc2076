"""docs/quickstart.md works: its config passes `cascade check-config`, renders with the documented
command, and the real Envoy accepts the result (and refuses to start without the credential's
variable); then the same config, with its two addresses pointed at mock backends on loopback
(vLLM-like, and a TLS stand-in for the hosted API), gets the model name and the credential
right in every situation of the quickstart's table."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cascade_dev.mock_backend import MockBackend, MockBackendThread

from extproc.config.snapshot import compile_config
from tests.e2e.harness import CASCADE, ENVOY, Gateway, Response
from tests.e2e.tls_backends import make_pki

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "quickstart.md"
KEY = "Bearer sk-quickstart-test"
CLIENT = "Bearer my-team-key"


def doc_config() -> dict[str, Any]:
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S) if "tiers:" in b]
    document = yaml.safe_load(block)
    assert isinstance(document, dict)
    return document


def test_the_commands_of_the_quickstart_exist() -> None:
    text = DOC.read_text()
    for command in ("cascade check-config", "cascade render envoy --config", "cascade serve"):
        assert command in text
    assert "(configuration.md#backends-host-port-or-a-url)" in text
    assert "## Backends: `host:port` or a URL" in (ROOT / "docs" / "configuration.md").read_text()
    assert "(docs/quickstart.md)" in (ROOT / "README.md").read_text()


def test_the_config_checks_renders_and_validates_with_envoy(tmp_path: Path) -> None:
    config = tmp_path / "cascade.yaml"
    config.write_text(yaml.safe_dump(doc_config()))
    snapshot = compile_config(config.read_text())
    weak, strong = snapshot.tiers
    assert (weak.model, strong.model, strong.fallback) == ("qwen3-4b", "gpt-4.1", "weak")
    assert snapshot.server.rewrite_model  # by default
    (hosted,) = strong.backends
    assert hosted.tls is not None and hosted.tls.sni == "api.openai.com"
    assert hosted.credential is not None and hosted.credential.env == "OPENAI_AUTH"
    run = [str(CASCADE), "check-config", str(config)]
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    rendered = tmp_path / "envoy.yaml"
    run = [str(CASCADE), "render", "envoy", "--config", str(config), "-o", str(rendered)]
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    assert "sk-" not in rendered.read_text()
    validate = [str(ENVOY), "--mode", "validate", "-c", str(rendered)]
    env = {**os.environ, "OPENAI_AUTH": KEY}
    result = subprocess.run(
        validate, check=False, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    env.pop("OPENAI_AUTH")
    result = subprocess.run(
        validate, check=False, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode != 0
    assert "OPENAI_AUTH" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Any]]:
    """The quickstart's config; vLLM = a name-checking mock, the hosted API = a TLS mock whose
    certificate comes from a test CA (the one `tls.ca_file` added to the doc's backend)."""
    workdir = tmp_path_factory.mktemp("quickstart")
    pki = make_pki(workdir / "pki")
    hosted = MockBackendThread(
        MockBackend("openai", ["gpt-4.1"], strict_models=True, tls=pki.server_context())
    ).start()
    previous = os.environ.get("OPENAI_AUTH")
    os.environ["OPENAI_AUTH"] = KEY

    def edit(document: dict[str, Any], gateway: Gateway) -> None:
        quick = doc_config()
        weak, strong = quick["tiers"]
        weak["backends"] = [{"address": f"127.0.0.1:{gateway.backends['weak'].port}"}]
        (backend,) = strong["backends"]
        assert backend["address"] == "https://api.openai.com/v1"
        backend["address"] = f"https://localhost:{hosted.port}/v1"
        backend["tls"] = {"ca_file": str(pki.ca)}
        document.clear()
        document.update(quick)

    gateway = Gateway(workdir, edit_config=edit, strict_models=True)
    try:
        yield gateway, hosted
    except BaseException:
        print(gateway.logs())
        raise
    finally:
        gateway.close()
        hosted.stop()
        if previous is None:
            os.environ.pop("OPENAI_AUTH", None)
        else:
            os.environ["OPENAI_AUTH"] = previous


def chat(gateway: Gateway, text: str) -> Response:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    headers = {"content-type": "application/json", "authorization": CLIENT}
    return gateway.request("POST", "/v1/chat/completions", body.encode(), headers)


def test_every_row_of_the_table(quickstart: tuple[Gateway, Any]) -> None:
    gateway, hosted = quickstart
    weak = gateway.backends["weak"]

    reply = chat(gateway, "what is a list comprehension?")  # classified weak
    assert (reply.status, reply.headers["x-cascade-served-model"]) == (200, "qwen3-4b")
    assert weak.requests[-1].model == "qwen3-4b"
    assert weak.requests[-1].headers["authorization"] == CLIENT

    reply = chat(gateway, "please refactor this module")  # classified strong
    assert (reply.status, reply.headers["x-cascade-served-model"]) == (200, "gpt-4.1")
    seen = hosted.requests[-1]
    assert (seen.model, seen.sni, seen.path) == ("gpt-4.1", "localhost", "/v1/chat/completions")
    assert seen.headers["authorization"] == KEY
    assert seen.headers["host"] == f"localhost:{hosted.port}"

    hosted.script(always="429")  # the provider rate-limits: fallback to weak
    try:
        reply = chat(gateway, "please refactor this module")
    finally:
        hosted.script()
    assert (reply.status, reply.headers["x-cascade-served-model"]) == (200, "qwen3-4b")
    assert hosted.requests[-1].status == 429 and hosted.requests[-1].model == "gpt-4.1"
    assert weak.requests[-1].model == "qwen3-4b"

    gateway.stop_classifier()  # fails open to weak
    reply = chat(gateway, "please refactor this module")
    assert (reply.status, reply.headers["x-mock-backend"]) == (200, "weak")
    assert weak.requests[-1].model == "qwen3-4b"

    assert all(CLIENT not in r.headers.values() for r in hosted.requests)
