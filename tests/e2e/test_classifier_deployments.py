"""The Envoy-level classifier canary for teams running two classifier deployments: a
runtime-fraction route sends a share of requests to the canary deployment's ext_proc cluster,
re-weighted live through Envoy's admin runtime; a pin header forces the canary."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from extproc.config.snapshot import ExtProcCanary
from tests.e2e.harness import Gateway, http_request, wait_for

RUNTIME_KEY = "cascade.classifier_canary_percent"


def add_v8(document: dict[str, Any], gateway: Gateway) -> None:
    document["classifiers"]["v8"] = copy.deepcopy(document["classifiers"]["v7"])


def start_canary_deployment(gateway: Gateway) -> dict[str, Any]:
    """A second `cascade serve` whose stable classifier is v8."""
    document = yaml.safe_load(gateway.config_path.read_text())
    document["classifier"] = "v8"
    config = gateway.workdir / "canary.yaml"
    config.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
    _, port = gateway.spawn_classifier(config, "canary-classifier")
    canary = ExtProcCanary(addresses=(f"127.0.0.1:{port}",), percent=0, runtime_key=RUNTIME_KEY)
    return {"ext_proc_canary": canary}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("deployments"),
        edit_config=add_v8,
        before_envoy=start_canary_deployment,
    )
    try:
        wait_for(
            lambda: (
                "cascade_extproc_canary::" in gateway.admin("/clusters").body.decode()
                and all(
                    line.endswith("health_flags::healthy")
                    for line in gateway.admin("/clusters").body.decode().splitlines()
                    if line.startswith("cascade_extproc_canary::") and "health_flags" in line
                )
            ),
            30,
            "canary classifier healthy",
        )
        yield gateway
    except BaseException:
        print(gateway.logs())
        raise
    finally:
        gateway.close()


def versions(stack: Gateway, count: int, headers: dict[str, str] | None = None) -> Counter[str]:
    return Counter(
        stack.chat("please refactor this", headers=headers).headers["x-cascade-classifier"]
        for _ in range(count)
    )


def set_percent(stack: Gateway, percent: int) -> None:
    reply = http_request(stack.admin_port, "POST", f"/runtime_modify?{RUNTIME_KEY}={percent}")
    assert reply.status == 200, reply.body


def test_weight_zero_keeps_everything_on_the_stable_deployment(stack: Gateway) -> None:
    assert versions(stack, 20) == {"v7": 20}


def test_pin_header_forces_the_canary_deployment(stack: Gateway) -> None:
    assert versions(stack, 10, {"x-classifier-canary": "1"}) == {"v8": 10}


def test_runtime_reweights_live(stack: Gateway) -> None:
    try:
        set_percent(stack, 100)
        assert versions(stack, 20) == {"v8": 20}
        set_percent(stack, 50)
        split = versions(stack, 60)
        assert split["v7"] >= 15 and split["v8"] >= 15, split
    finally:
        set_percent(stack, 0)
    assert versions(stack, 10) == {"v7": 10}
    # routing by tier is unaffected: served by strong in every case
    assert stack.chat("please refactor this").headers["x-cascade-served-tier"] == "strong"
