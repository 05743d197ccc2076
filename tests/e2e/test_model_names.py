"""Model names that never 404, with the shipped envoy/cascade.yaml as it is (only its backend
addresses changed): backends that check the model name (404 otherwise, like vLLM's
`--served-model-name`) get the name they serve on every attempt — classified requests, a
fallback from strong to weak, and requests while the classifier is down (Envoy fails open).

Clients send what IDEs hard-code (`gpt-4o`), the router's `auto`, or no model at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import Gateway, Response, reset_backends, serving

SHIPPED = Path(__file__).parents[2] / "envoy" / "cascade.yaml"
SERVED = {"weak": "qwen3-4b", "strong": "glm-5"}
PROMPTS = ["hi", "please refactor this module", "what is a list comprehension?", "x" * 600]
CLIENT_MODELS = ["gpt-4o", "auto", None]


def _shipped(rewrite_model: bool | None) -> Any:
    def edit(document: dict[str, Any], gateway: Gateway) -> None:
        shipped = yaml.safe_load(SHIPPED.read_text())
        for tier in shipped["tiers"]:
            tier["backends"] = [{"address": f"127.0.0.1:{gateway.backends[tier['name']].port}"}]
        if rewrite_model is not None:
            shipped["server"]["rewrite_model"] = rewrite_model
        document.clear()
        document.update(shipped)

    return edit


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("shipped"), edit_config=_shipped(None), strict_models=True
    )
    yield from serving(gateway)


def chat(gateway: Gateway, text: str, model: str | None) -> Response:
    document: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if model is not None:
        document["model"] = model
    body = json.dumps(document).encode()
    return gateway.request(
        "POST", "/v1/chat/completions", body, {"content-type": "application/json"}
    )


def _all_served(gateway: Gateway) -> list[tuple[str, str | None, int]]:
    return [
        (name, record.model, record.status)
        for name, backend in gateway.backends.items()
        for record in backend.requests
    ]


def _clear(gateway: Gateway) -> None:
    reset_backends(gateway)


def test_the_shipped_config_rewrites_model_names() -> None:
    document = yaml.safe_load(SHIPPED.read_text())
    assert document["server"]["rewrite_model"] is True
    assert {t["name"]: t["model"] for t in document["tiers"]} == SERVED


def test_every_classified_request_asks_for_the_served_model(shipped: Gateway) -> None:
    _clear(shipped)
    tiers = set()
    for text in PROMPTS:
        for model in CLIENT_MODELS:
            reply = chat(shipped, text, model)
            assert reply.status == 200, (text[:20], model, reply.body)
            tiers.add(reply.headers["x-cascade-served-tier"])
    assert tiers == {"weak", "strong"}
    served = _all_served(shipped)
    assert len(served) == len(PROMPTS) * len(CLIENT_MODELS)
    assert all(model == SERVED[name] and status == 200 for name, model, status in served), served


def test_a_fallback_attempt_asks_weak_for_its_model(shipped: Gateway) -> None:
    _clear(shipped)
    shipped.backends["strong"].script(always="503")
    try:
        for model in CLIENT_MODELS:
            reply = chat(shipped, "please refactor this module", model)
            assert reply.status == 200, reply.body
            assert reply.headers["x-cascade-served-tier"] == "weak"
        served = _all_served(shipped)
    finally:
        shipped.backends["strong"].reset()
    assert [m for name, m, _ in served if name == "strong"] == ["glm-5"] * 3  # the 503s
    assert [m for name, m, s in served if name == "weak"] == ["qwen3-4b"] * 3


def test_classifier_down_fails_open_with_the_default_tiers_model(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, edit_config=_shipped(None), strict_models=True)
    try:
        gateway.stop_classifier()
        for model in CLIENT_MODELS:
            reply = chat(gateway, "please refactor this module", model)
            assert reply.status == 200, reply.body
            assert reply.headers["x-mock-backend"] == "weak"
        assert [m for _, m, s in _all_served(gateway)] == ["qwen3-4b"] * len(CLIENT_MODELS)
    finally:
        gateway.close()


def test_without_rewrite_model_a_strict_backend_refuses_the_clients_name(tmp_path: Path) -> None:
    """What `rewrite_model: false` (the old default) does to backends that check names."""
    gateway = Gateway(tmp_path, edit_config=_shipped(False), strict_models=True)
    try:
        statuses = [chat(gateway, text, "gpt-4o").status for text in PROMPTS]
        assert statuses == [404] * len(PROMPTS)
    finally:
        gateway.close()
