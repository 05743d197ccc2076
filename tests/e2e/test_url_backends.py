"""Hosted APIs as a tier, through the real Envoy: URL backends with TLS (SNI, CA, client
certificate), Host and base-path rewrite, a credential Envoy injects from a file or an
environment variable, weights and fallback between two providers of one tier.

The providers are TLS mock backends on 127.0.0.1 with a `localhost` certificate from a CA made
with openssl for the test; they check the model name (404 otherwise, like vLLM's
`--served-model-name`) and record the SNI, Host, path and headers they saw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cascade_dev.mock_backend import MockBackend, MockBackendThread, RecordedRequest

from tests.e2e.harness import Gateway, serving, stream_events
from tests.e2e.tls_backends import Pki, make_pki

CLIENT_KEY = "client-secret-do-not-forward"
A_KEY = "Bearer provider-a-key"
B_KEY = "provider-b-key"
B_ENV = "CASCADE_TEST_PROVIDER_B_KEY"
STRONG = "please refactor this module"  # the v7 keyword rule: strong
STREAM_DELAY_MS = 150  # between a provider's SSE events


class Providers:
    """Two TLS providers: `a` under the base path /openai/v1, `b` asking for a client cert."""

    def __init__(self, workdir: Path) -> None:
        self.pki: Pki = make_pki(workdir / "pki")
        self.a = MockBackendThread(
            MockBackend(
                "provider-a",
                ["gpt-x"],
                stream_delay_ms=STREAM_DELAY_MS,
                strict_models=True,
                tls=self.pki.server_context(),
                path_prefix="/openai",
            )
        ).start()
        self.b = MockBackendThread(
            MockBackend(
                "provider-b",
                ["gpt-y"],
                stream_delay_ms=STREAM_DELAY_MS,
                strict_models=True,
                tls=self.pki.server_context(require_client_cert=True),
            )
        ).start()
        self.key_file = workdir / "provider-a.key"
        # A trailing newline, as `kubectl create secret --from-file` or an editor leaves it.
        self.key_file.write_text(A_KEY + "\n")

    def strong_backends(self, *, ca: Path | None = None) -> list[dict[str, Any]]:
        pki = self.pki
        return [
            {
                "address": f"https://localhost:{self.a.port}/openai/v1",
                "credential": {"file": str(self.key_file)},
                "tls": {"ca_file": str(ca or pki.ca)},
            },
            {
                "address": f"https://localhost:{self.b.port}/v1",
                "model": "gpt-y",
                "credential": {"env": B_ENV, "header": "x-api-key"},
                "tls": {
                    "ca_file": str(ca or pki.ca),
                    "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key),
                },
            },
        ]

    def reset(self) -> None:
        for provider in (self.a, self.b):
            provider.reset()

    def close(self) -> None:
        self.a.stop()
        self.b.stop()


def _stack(workdir: Path, providers: Providers, ca: Path | None = None) -> Gateway:
    def edit(document: dict[str, Any], _gateway: Gateway) -> None:
        strong = document["tiers"][1]
        strong["model"] = "gpt-x"
        strong["backends"] = providers.strong_backends(ca=ca)
        # both providers before the fallback tier
        document.setdefault("envoy", {}).setdefault("retries", {})["attempts_per_tier"] = 2

    return Gateway(workdir, edit_config=edit, strict_models=True)


@pytest.fixture(scope="module")
def providers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    previous = os.environ.get(B_ENV)
    os.environ[B_ENV] = B_KEY  # read by Envoy at start (the rendered config names the variable)
    stack = Providers(tmp_path_factory.mktemp("providers"))
    try:
        yield stack
    finally:
        stack.close()
        if previous is None:
            os.environ.pop(B_ENV, None)
        else:
            os.environ[B_ENV] = previous


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory, providers: Providers) -> Iterator[Gateway]:
    gateway = _stack(tmp_path_factory.mktemp("hosted"), providers)
    yield from serving(gateway)


def _ask(gateway: Gateway, text: str = STRONG) -> Any:
    """A client sending its key in every header a provider might read."""
    headers = {
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-api-key": CLIENT_KEY,
        "api-key": CLIENT_KEY,
        "cookie": f"session={CLIENT_KEY}",
    }
    return gateway.chat(text, headers=headers)


def _never_saw_client_key(records: list[RecordedRequest]) -> None:
    for record in records:
        assert all(CLIENT_KEY not in value for value in record.headers.values()), record.headers
        assert not any(name.startswith("x-cascade-") for name in record.headers), record.headers
        assert "x-envoy-original-path" not in record.headers


def test_provider_a_gets_sni_host_path_model_and_its_own_credential(
    hosted: Gateway, providers: Providers
) -> None:
    providers.reset()
    for _ in range(4):
        reply = _ask(hosted)
        assert reply.status == 200, reply.body
        assert reply.headers["x-cascade-served-tier"] == "strong"
    seen = providers.a.requests
    assert seen, "round robin over two providers gave provider a none of 4 requests"
    for record in seen:
        assert record.sni == "localhost"
        assert record.headers["host"] == f"localhost:{providers.a.port}"
        assert record.path == "/openai/v1/chat/completions"
        assert record.headers["authorization"] == A_KEY  # the file's newline is not sent
        assert record.model == "gpt-x"
        assert record.status == 200
    _never_saw_client_key(providers.a.requests + providers.b.requests)


def test_a_rate_limited_provider_falls_back_to_the_other_with_its_model_and_key(
    hosted: Gateway, providers: Providers
) -> None:
    providers.reset()
    providers.a.script(always="429")
    try:
        for _ in range(3):
            reply = _ask(hosted)
            assert reply.status == 200, reply.body
            assert reply.headers["x-mock-backend"] == "provider-b"
            assert reply.headers["x-cascade-served-model"] == "gpt-y"
    finally:
        providers.a.reset()
    served = [r for r in providers.b.requests if r.status == 200]
    assert len(served) == 3
    for record in served:
        assert record.sni == "localhost"
        assert record.client_cert == "cascade-gateway"  # the configured client certificate
        assert record.headers["host"] == f"localhost:{providers.b.port}"
        assert record.path == "/v1/chat/completions"
        assert record.headers["x-api-key"] == B_KEY
        assert "authorization" not in record.headers  # the client's is removed, not forwarded
        assert record.model == "gpt-y"
    _never_saw_client_key(providers.a.requests + providers.b.requests)


def test_both_providers_down_falls_back_to_the_self_hosted_tier_with_its_model(
    hosted: Gateway, providers: Providers
) -> None:
    providers.reset()
    weak = hosted.backends["weak"]
    weak.clear_requests()
    providers.a.script(always="503")
    providers.b.script(always="429")
    try:
        reply = _ask(hosted)
    finally:
        providers.reset()
    assert reply.status == 200, reply.body
    assert reply.headers["x-mock-backend"] == "weak"
    assert weak.requests[-1].model == "qwen3-4b"
    assert {r.status for r in providers.a.requests + providers.b.requests} <= {429, 503}
    _never_saw_client_key(providers.a.requests + providers.b.requests)


def test_weak_prompts_never_reach_a_provider(hosted: Gateway, providers: Providers) -> None:
    providers.reset()
    reply = _ask(hosted, "what is a list comprehension?")
    assert reply.headers["x-mock-backend"] == "weak"
    assert providers.a.requests == [] and providers.b.requests == []


def test_a_stream_from_a_provider_arrives_as_it_is_generated(
    hosted: Gateway, providers: Providers
) -> None:
    """The per-backend listener passes SSE through without buffering it."""
    providers.reset()
    body = json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": STRONG}]}
    ).encode()
    events = list(stream_events(hosted.port, body))
    text = b"".join(chunk for _, chunk in events)
    assert text.rstrip().endswith(b"data: [DONE]")
    # the first event reached the client well before the last was generated (4 content
    # events plus the role and finish events, STREAM_DELAY_MS apart)
    assert events[-1][0] - events[0][0] >= 3 * STREAM_DELAY_MS / 1000
    [record] = providers.a.requests + providers.b.requests
    assert record.stream and record.model in ("gpt-x", "gpt-y")


def test_a_large_body_passes_the_listener_whole(hosted: Gateway, providers: Providers) -> None:
    """3 MB (over Envoy's 1 MiB default buffer) reach the provider, rewritten, complete."""
    providers.reset()
    reply = _ask(hosted, "x" * (3 * 1024 * 1024))  # the length rule: strong
    assert reply.status == 200, reply.body[:300]
    [record] = providers.a.requests + providers.b.requests
    assert record.body_length == record.content_length
    assert record.body_length > 3 * 1024 * 1024
    assert record.model in ("gpt-x", "gpt-y")


def test_the_rendered_config_holds_no_credential(hosted: Gateway) -> None:
    rendered = (hosted.workdir / "envoy.yaml").read_text()
    assert B_KEY not in rendered and "provider-a-key" not in rendered
    document = yaml.safe_load(rendered)
    secrets = document["static_resources"]["secrets"]
    sources = [s["generic_secret"]["secret"] for s in secrets]
    assert {"environment_variable": B_ENV} in sources
    assert any("filename" in source for source in sources)


def test_a_certificate_from_an_untrusted_ca_is_refused(
    tmp_path: Path, providers: Providers
) -> None:
    """The certificate is checked: with another CA configured, no request reaches a provider
    (the TLS handshake fails) and the tier falls back to weak."""
    providers.reset()
    gateway = _stack(tmp_path, providers, ca=providers.pki.other_ca)
    try:
        reply = _ask(gateway)
        assert reply.status == 200, reply.body
        assert reply.headers["x-mock-backend"] == "weak"
        assert providers.a.requests == [] and providers.b.requests == []
    finally:
        gateway.close()


def test_an_unreachable_provider_is_retried_on_the_other_then_on_weak(
    hosted: Gateway, providers: Providers
) -> None:
    """Last in this module: the refused connections count toward outlier ejection."""
    providers.reset()
    providers.a.stop_backend()  # port closed: the listener's connect fails, Envoy answers 503
    try:
        for _ in range(2):
            reply = _ask(hosted)
            assert reply.status == 200, reply.body
            assert reply.headers["x-mock-backend"] == "provider-b"
        providers.b.stop_backend()
        try:
            reply = _ask(hosted)
            assert reply.status == 200, reply.body
            assert reply.headers["x-mock-backend"] == "weak"
            assert hosted.backends["weak"].requests[-1].model == "qwen3-4b"
        finally:
            providers.b.start_backend()
    finally:
        providers.a.start_backend()
