"""The in-process classifier canary over 1,000 requests: the split is within 3 points of the
weight, and a user's requests always go to the same version (hash of the key header)."""

from __future__ import annotations

from collections import Counter

import pytest

from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, compile_config
from extproc.core.classify import canary_bucket
from extproc.routing.choice import choose_classifier
from extproc.routing.processor import RequestProcessor
from tests.conftest import chat_body
from tests.protocol.streams import request_body, request_headers, set_headers

REQUESTS = 1000


def snapshot_with_canary(weight: float, key_header: str = "x-user-id") -> Snapshot:
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("classifiers:\n  v7:", "classifiers:\n  v8: {default: weak}\n  v7:", 1)
    text += f"canary: {{version: v8, weight: {weight}, key_header: {key_header}}}\n"
    return compile_config(text, "canary.yaml")


def classify_once(snapshot: Snapshot, user: str | None, request_id: str) -> str:
    extra = {"x-request-id": request_id}
    if user is not None:
        extra["x-user-id"] = user
    processor = RequestProcessor(snapshot)
    processor.handle(request_headers(extra=extra))
    answer = processor.handle(request_body(chat_body("hello")))
    processor.close()
    return set_headers(answer)["x-cascade-classifier"]


@pytest.mark.parametrize("weight", [10, 50, 90])
def test_split_over_1000_users_is_within_3_points(weight: float) -> None:
    snapshot = snapshot_with_canary(weight)
    versions = Counter(classify_once(snapshot, f"user-{n}", f"req-{n}") for n in range(REQUESTS))
    share = 100 * versions["v8"] / REQUESTS
    assert abs(share - weight) <= 3, versions
    assert versions["v7"] + versions["v8"] == REQUESTS


def test_split_by_request_id_when_no_user_header() -> None:
    snapshot = snapshot_with_canary(10)
    versions = Counter(classify_once(snapshot, None, f"anon-{n}") for n in range(REQUESTS))
    assert abs(100 * versions["v8"] / REQUESTS - 10) <= 3, versions


def test_a_user_keeps_one_version_across_requests() -> None:
    snapshot = snapshot_with_canary(30)
    for user in range(100):
        seen = {classify_once(snapshot, f"user-{user}", f"r-{user}-{n}") for n in range(5)}
        assert len(seen) == 1, user


def test_raising_the_weight_only_moves_users_to_the_canary() -> None:
    """10 -> 50 -> 100: nobody on v8 goes back to v7 (a conversation never flips back)."""
    keys = [f"user-{n}" for n in range(REQUESTS)]
    previous: set[str] = set()
    for weight in (10, 50, 100):
        snapshot = snapshot_with_canary(weight)
        on_canary = {k for k in keys if choose_classifier(snapshot, k).version == "v8"}
        assert previous <= on_canary
        previous = on_canary
    assert len(previous) == REQUESTS


def test_bucket_is_uniform_enough() -> None:
    buckets = Counter(int(canary_bucket(f"k{n}") // 10) for n in range(10_000))
    assert all(900 <= count <= 1100 for count in buckets.values()), buckets
