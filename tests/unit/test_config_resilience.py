"""Config for the Envoy-side resilience: fallback, mirror, backend groups, retries, outlier
detection, the classifier deployment canary and the rollout policy of `cascade canary`."""

from __future__ import annotations

import pytest

from extproc.config.snapshot import (
    DEFAULT_TRIGGERS,
    ExtProcCanary,
    RetrySettings,
    compile_config,
    fallback_chain,
)
from extproc.core.errors import ConfigError

BASE = """
tiers:
  - {name: weak, model: small}
  - {name: strong, model: big, fallback: weak}
classifier: v1
classifiers:
  v1: {default: weak}
  v2: {default: strong}
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_config(text, "conf.yaml")
    return info.value


def test_defaults() -> None:
    snapshot = compile_config(BASE)
    assert snapshot.tier("strong").fallback == "weak"
    assert snapshot.tier("weak").fallback is None
    assert snapshot.tier("weak").sticky_header == "x-user-id"
    assert snapshot.envoy.retries == RetrySettings()
    assert snapshot.envoy.retries.status_codes == (429, 503)
    assert snapshot.envoy.outlier_detection.enabled
    assert snapshot.envoy.outlier_detection.max_ejection_percent == 100
    assert snapshot.envoy.ext_proc_canary is None
    assert fallback_chain(snapshot, "strong") == ("strong", "weak")
    assert fallback_chain(snapshot, "weak") == ("weak",)


def test_fallback_chain_over_three_tiers() -> None:
    text = """
tiers:
  - {name: small}
  - {name: medium, fallback: small}
  - {name: large, fallback: medium}
classifier: v1
classifiers: {v1: {default: small}}
"""
    snapshot = compile_config(text)
    assert fallback_chain(snapshot, "large") == ("large", "medium", "small")


def test_mirror_and_backend_groups() -> None:
    text = BASE.replace(
        "  - {name: weak, model: small}\n",
        """  - name: weak
    model: small
    mirror: {tier: strong, percent: 2.5}
    sticky_header: X-Team
    backends:
      - {address: "10.0.0.1:8000", name: stable, weight: 45}
      - {address: "10.0.0.2:8000", name: stable, weight: 45}
      - {address: "10.0.0.3:8000", name: canary, model: small-v2, weight: 10}
""",
    )
    weak = compile_config(text).tier("weak")
    assert weak.mirror is not None
    assert (weak.mirror.tier, weak.mirror.percent) == ("strong", 2.5)
    assert weak.sticky_header == "x-team"
    groups = weak.backend_groups
    assert [name for name, _ in groups] == ["stable", "canary"]
    assert [len(members) for _, members in groups] == [2, 1]
    assert groups[1][1][0].model == "small-v2"
    assert groups[0][1][0].model == "small"  # tier model by default


def test_rollout_defaults_are_the_seeds_triggers() -> None:
    snapshot = compile_config(BASE + "canary: {version: v2, weight: 10}\n")
    assert snapshot.canary is not None
    rollout = snapshot.canary.rollout
    assert rollout.steps == (10, 50, 100)
    assert {t.name: (t.above, t.window_s, t.for_s) for t in rollout.triggers} == {
        "error_rate": (0.02, 300, 300),
        "p99_latency_s": (15.0, 300, 300),
        "misroute_rate": (0.08, 86400, 0),
    }


def test_rollout_triggers_can_be_shortened_replaced_or_dropped() -> None:
    text = (
        BASE
        + """canary:
  version: v2
  weight: 10
  rollout:
    prometheus: http://127.0.0.1:9091/
    steps: [5, 25, 100]
    step_interval_s: 2
    check_interval_s: 1
    min_requests: 3
    triggers:
      error_rate: {window_s: 3, for_s: 2}
      misroute_rate: false
      queue_depth: {query: 'max(queue{version="$version"})', above: 50, window_s: 5, for_s: 0}
"""
    )
    snapshot = compile_config(text)
    assert snapshot.canary is not None
    rollout = snapshot.canary.rollout
    assert rollout.prometheus == "http://127.0.0.1:9091"
    triggers = {t.name: t for t in rollout.triggers}
    assert set(triggers) == {"error_rate", "p99_latency_s", "queue_depth"}
    assert (triggers["error_rate"].window_s, triggers["error_rate"].for_s) == (3, 2)
    assert triggers["error_rate"].query == DEFAULT_TRIGGERS[0].query
    assert triggers["queue_depth"].above == 50


def test_ext_proc_canary() -> None:
    text = BASE + 'envoy: {ext_proc_canary: {addresses: ["127.0.0.1:50052"], percent: 10}}\n'
    canary = compile_config(text).envoy.ext_proc_canary
    assert canary == ExtProcCanary(addresses=("127.0.0.1:50052",), percent=10)
    assert canary.mode == "route"


TIER_WEAK = "  - {name: weak, model: small}\n"
TIER_STRONG = "  - {name: strong, model: big, fallback: weak}\n"


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (BASE.replace("fallback: weak", "fallback: huge"), "tiers[1].fallback", "got 'huge'"),
        (BASE.replace("fallback: weak", "fallback: strong"), "tiers[1].fallback", "itself"),
        (
            BASE.replace(TIER_WEAK, "  - {name: weak, fallback: strong}\n"),
            "tiers[0].fallback",
            "cycle: weak -> strong -> weak",
        ),
        (
            BASE.replace(TIER_WEAK, "  - {name: weak, mirror: {tier: strong}}\n"),
            "tiers[0].mirror.percent",
            "is required",
        ),
        (
            BASE.replace(TIER_WEAK, "  - {name: weak, mirror: {tier: weak, percent: 1}}\n"),
            "tiers[0].mirror.tier",
            "itself",
        ),
        (
            BASE.replace(TIER_WEAK, "  - {name: weak, mirror: {tier: strong, percent: 101}}\n"),
            "tiers[0].mirror.percent",
            "0..100",
        ),
        (
            BASE.replace(
                TIER_WEAK,
                "  - {name: weak, backends: [{address: 'a:1', name: x}, {address: 'b:1'}]}\n",
            ),
            "tiers[0].backends[1].name",
            "name every backend",
        ),
        (
            BASE.replace(
                TIER_WEAK,
                "  - {name: weak, backends: [{address: 'b:1'}, {address: 'a:1', name: x}]}\n",
            ),
            "tiers[0].backends",
            "name every backend",
        ),
        (
            BASE.replace(
                TIER_WEAK, "  - {name: weak, backends: [{address: 'a:1', name: 'a b'}]}\n"
            ),
            "tiers[0].backends[0].name",
            "letters, digits",
        ),
        (BASE + "envoy: {retries: {num_retries: -1}}\n", "envoy.retries.num_retries", ">= 0"),
        (BASE + "envoy: {retries: {retry_on: [5xx, teapot]}}\n", "envoy.retries.retry_on[1]", ""),
        (
            BASE + "envoy: {retries: {retry_on: [5xx]}}\n",
            "envoy.retries.retry_on",
            "retriable-status-codes",
        ),
        (BASE + "envoy: {retries: {status_codes: [200]}}\n", "envoy.retries.status_codes[0]", ""),
        (BASE + "envoy: {retries: {status_codes: [700]}}\n", "envoy.retries.status_codes[0]", ""),
        (
            BASE + "envoy: {retries: {backoff_base_ms: 500, backoff_max_ms: 100}}\n",
            "envoy.retries.backoff_max_ms",
            ">= backoff_base_ms",
        ),
        (
            BASE + "envoy: {route_timeout_s: 60, retries: {per_try_timeout_s: 120}}\n",
            "envoy.retries.per_try_timeout_s",
            "route_timeout_s",
        ),
        (BASE + "envoy: {retries: {tries: 3}}\n", "envoy.retries.tries", "unknown key"),
        (
            BASE + "envoy: {retries: {budget_percent: 120}}\n",
            "envoy.retries.budget_percent",
            "0..100",
        ),
        (
            BASE + "envoy: {retries: {min_retry_concurrency: 0}}\n",
            "envoy.retries.min_retry_concurrency",
            ">= 1",
        ),
        (
            BASE + "envoy: {route_timeout_s: 5, retries: {stream_per_try_timeout_ms: 5000}}\n",
            "envoy.retries.stream_per_try_timeout_ms",
            "route_timeout_s",
        ),
        (BASE + "envoy: {unclassified: drop}\n", "envoy.unclassified", "rewrite, pass"),
        (
            BASE + "envoy: {outlier_detection: {max_ejection_percent: 150}}\n",
            "envoy.outlier_detection.max_ejection_percent",
            "1..100",
        ),
        (
            BASE + "envoy: {outlier_detection: {enabled: 1}}\n",
            "envoy.outlier_detection.enabled",
            "true or false",
        ),
        (
            BASE + "envoy: {ext_proc_canary: {addresses: ['127.0.0.1:50051'], percent: 5}}\n",
            "envoy.ext_proc_canary.addresses[0]",
            "also in envoy.ext_proc",
        ),
        (
            BASE + "envoy: {ext_proc_canary: {addresses: ['h:1'], percent: 5, mode: dns}}\n",
            "envoy.ext_proc_canary.mode",
            "route, endpoints",
        ),
        (
            BASE
            + "envoy: {ext_proc_canary: {addresses: ['h:1'], percent: 5, pin_header: x-cascade-v}}\n",
            "envoy.ext_proc_canary.pin_header",
            "removed before routing",
        ),
        (
            BASE + "canary: {version: v2, rollout: {steps: [50, 10]}}\n",
            "canary.rollout.steps",
            "increasing",
        ),
        (
            BASE + "canary: {version: v2, rollout: {prometheus: 'prom:9090'}}\n",
            "canary.rollout.prometheus",
            "http(s) URL",
        ),
        (
            BASE + "canary: {version: v2, rollout: {triggers: {mine: {above: 1}}}}\n",
            "canary.rollout.triggers.mine.query",
            "is required",
        ),
        (
            BASE + "canary: {version: v2, rollout: {triggers: {mine: {query: 'up', above: 1}}}}\n",
            "canary.rollout.triggers.mine.query",
            "$version",
        ),
        (
            BASE + "canary: {version: v2, rollout: {triggers: {error_rate: {for: 5}}}}\n",
            "canary.rollout.triggers.error_rate.for",
            "unknown key",
        ),
    ],
)
def test_errors_name_the_field(text: str, path: str, fragment: str) -> None:
    error = error_of(text)
    assert error.path == path, error
    assert fragment in error.message


def test_retry_budget_stream_timeout_and_unclassified_settings() -> None:
    defaults = compile_config(BASE).envoy
    assert defaults.retries.budget_percent == 20.0
    assert defaults.retries.min_retry_concurrency == 1000
    assert defaults.retries.stream_per_try_timeout_ms == 10000
    assert defaults.unclassified == "auto"
    text = BASE + (
        "envoy:\n  unclassified: reject\n  retries: {budget_percent: 0, min_retry_concurrency: 50,"
        " stream_per_try_timeout_ms: 0}\n"
    )
    envoy = compile_config(text).envoy
    assert envoy.unclassified == "reject"
    assert (envoy.retries.budget_percent, envoy.retries.min_retry_concurrency) == (0.0, 50)
    assert envoy.retries.stream_per_try_timeout_ms == 0


def test_fallback_tier_order_does_not_matter() -> None:
    text = BASE.replace(TIER_WEAK + TIER_STRONG, TIER_STRONG + TIER_WEAK)
    assert compile_config(text).tier("strong").fallback == "weak"
