"""What may become a metric label: only names the config knows, so fabricated Envoy attributes
on a direct ext_proc connection cannot create unbounded series."""

from __future__ import annotations

from extproc.config.snapshot import Snapshot
from extproc.telemetry.records import OTHER, cluster_label, status_label, tier_label


def test_cluster_label_keeps_rendered_names_only(default_snapshot: Snapshot) -> None:
    tiers = default_snapshot.tier_names
    for tier in tiers:
        assert cluster_label(default_snapshot, f"tier_{tier}") == f"tier_{tier}"
        assert cluster_label(default_snapshot, f"tier_{tier}_fallback") == f"tier_{tier}_fallback"
    assert cluster_label(default_snapshot, "") == ""
    for forged in ("tier_nope", "cascade_extproc", "x" * 5000, f"tier_{tiers[0]}x", "tier_"):
        assert cluster_label(default_snapshot, forged) == OTHER
    assert cluster_label(default_snapshot, f"tier_{tiers[0]}_" + "a" * 200) == OTHER


def test_status_label_is_a_real_http_status() -> None:
    assert [status_label(s) for s in (0, 100, 200, 429, 599)] == ["0", "100", "200", "429", "599"]
    assert {status_label(s) for s in (1, 99, 600, 10**9, -5)} == {OTHER}


def test_tier_label(default_snapshot: Snapshot) -> None:
    weak = default_snapshot.tier_names[0]
    assert tier_label(default_snapshot, weak) == weak
    assert tier_label(default_snapshot, "forged") == OTHER
