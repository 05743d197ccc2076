"""The `telemetry:` config section: defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from extproc.config.snapshot import compile_config
from extproc.core.errors import ConfigError

BASE = """
tiers: [{name: weak}, {name: strong}]
classifier: v1
classifiers:
  v1: {default: weak}
"""


def test_defaults_observe_responses_and_capture_no_prompts() -> None:
    telemetry = compile_config(BASE).telemetry
    assert telemetry.response_processing is True
    assert telemetry.capture_prompts is False
    assert telemetry.decision_log is None
    assert telemetry.user_key_headers == ("x-user-id",)
    assert (telemetry.retry.similarity, telemetry.retry.window_s) == (0.8, 300)
    assert telemetry.state.backend == "memory"


def test_full_section_compiles() -> None:
    telemetry = compile_config(
        BASE
        + """
telemetry:
  response_processing: false
  user_key_headers: X-User-Id
  capture_prompts: true
  redact: none
  tokens_per_second: 250
  decision_log: {path: /tmp/d.jsonl, max_bytes: 2048, backups: 2}
  retry: {similarity: 0.9, window_s: 60, per_user: 3}
  feedback: {short_prompt_chars: 80, cheap_output_tokens: 100}
  state: {backend: redis, url: "redis://127.0.0.1:6379/0", timeout_ms: 50}
"""
    ).telemetry
    assert telemetry.response_processing is False
    assert telemetry.user_key_headers == ("x-user-id",)
    assert telemetry.decision_log is not None
    assert (telemetry.decision_log.max_bytes, telemetry.decision_log.backups) == (2048, 2)
    assert telemetry.retry.per_user == 3
    assert telemetry.feedback.short_prompt_chars == 80
    assert telemetry.state.url.startswith("redis://")


@pytest.mark.parametrize(
    ("section", "path", "fragment"),
    [
        ("{colour: red}", "telemetry.colour", "unknown key"),
        ("{response_processing: yes please}", "telemetry.response_processing", "true or false"),
        ("{retry: {similarity: 1.5}}", "telemetry.retry.similarity", "in (0, 1]"),
        ("{retry: {window_s: 0}}", "telemetry.retry.window_s", ">= 1"),
        ("{decision_log: {max_bytes: 10}}", "telemetry.decision_log.path", "is required"),
        ("{decision_log: {path: x, max_bytes: 10}}", "telemetry.decision_log.max_bytes", ">= 1024"),
        ("{state: {backend: etcd}}", "telemetry.state.backend", "memory, redis"),
        ("{state: {backend: redis}}", "telemetry.state.url", "redis://"),
        ("{redact: scrub}", "telemetry.redact", "module:function"),
        ("{tokens_per_second: 0}", "telemetry.tokens_per_second", "> 0"),
        ("{user_key_headers: [1]}", "telemetry.user_key_headers[0]", "a string"),
    ],
    ids=[
        "unknown",
        "bool",
        "similarity",
        "window",
        "log-path",
        "log-size",
        "backend",
        "redis-url",
        "redact",
        "tps",
        "headers",
    ],
)
def test_errors_name_the_field(section: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_config(BASE + f"telemetry: {section}\n", "conf.yaml")
    assert info.value.path == path
    assert fragment in info.value.message
