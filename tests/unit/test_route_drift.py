"""Route drift: the fingerprint the rendered Envoy config sends, and how the server uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from extproc.config.drift import (
    KEPT_FINGERPRINTS,
    MAX_FINGERPRINT,
    RoutesGuard,
    envoy_tiers,
    restrict,
    routes_fingerprint,
)
from extproc.config.snapshot import Snapshot, compile_config
from extproc.core import headers
from extproc.gateway.render import bootstrap

CASCADE = Path(sys.executable).with_name("cascade")


def config(tiers: str, rules: str = "[]") -> Snapshot:
    return compile_config(
        f"tiers: {tiers}\nclassifier: v1\nclassifiers:\n  v1: {{default: weak, rules: {rules}}}\n"
    )


TWO = config("[{name: weak, model: a}, {name: strong, model: b}]")
THREE = config("[{name: weak, model: a}, {name: mid, model: m}, {name: strong, model: b}]")


def test_fingerprint_follows_tier_names_and_models_only() -> None:
    assert routes_fingerprint(TWO).endswith(":weak,strong")
    renamed_model = config("[{name: weak, model: a}, {name: strong, model: c}]")
    assert routes_fingerprint(renamed_model) != routes_fingerprint(TWO)
    other_rules = config(
        "[{name: weak, model: a}, {name: strong, model: b}]",
        "[{kind: chars, gt: 9, tier: strong}]",
    )
    assert routes_fingerprint(other_rules) == routes_fingerprint(TWO)


def test_the_classifier_filter_sends_the_fingerprint() -> None:
    text = str(bootstrap(TWO))
    filters = bootstrap(TWO)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    http_filters = filters[0]["typed_config"]["http_filters"]
    classifier = next(f for f in http_filters if f["name"] == "envoy.filters.http.ext_proc")
    metadata = classifier["typed_config"]["grpc_service"]["initial_metadata"]
    assert {"key": headers.ROUTES_METADATA, "value": routes_fingerprint(TWO)} in metadata
    assert text.count(headers.ROUTES_METADATA) == 1  # not on the per-attempt filter


class Box:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


def test_guard_keeps_the_last_routable_snapshot_and_counts() -> None:
    box = Box(TWO)
    changes: list[bool] = []
    guard = RoutesGuard(lambda: box.snapshot, changes.append)
    envoy = routes_fingerprint(TWO)
    assert guard.snapshot_for(envoy) is TWO
    assert guard.snapshot_for("") is TWO  # no fingerprint (hand-written Envoy): current
    box.snapshot = THREE
    guard.reloaded(ok=True, message="")
    assert changes == [False]  # judged at the reload, before any stream
    assert guard.snapshot_for(envoy) is TWO
    assert guard.mismatches == {"kept": 1, "restricted": 0, "unknown": 0}
    assert not guard.in_sync
    # Envoy re-rendered from the new config: in sync, current again
    assert guard.snapshot_for(routes_fingerprint(THREE)) is THREE
    assert guard.in_sync
    assert changes == [False, True]


def test_guard_without_a_routable_snapshot_restricts_the_current_one_to_envoys_tiers() -> None:
    three = config(
        "[{name: weak, model: a}, {name: mid, model: m}, {name: strong, model: b}]",
        "[{name: to_mid, kind: keyword, keywords: [refactor], tier: mid},"
        " {name: long, kind: chars, gt: 10, tier: strong}]",
    )
    guard = RoutesGuard(lambda: three)
    chosen = guard.snapshot_for(routes_fingerprint(TWO))  # Envoy knows weak and strong only
    assert chosen is not three
    assert guard.snapshot_for(routes_fingerprint(TWO)) is chosen  # cached
    rules = chosen.classifiers["v1"].rules
    assert [rule.name for rule in rules] == ["long"]
    assert guard.mismatches == {"kept": 0, "restricted": 2, "unknown": 0}
    assert not guard.in_sync
    none_in_common = guard.snapshot_for("0123456789ab:alpha,beta")
    assert none_in_common is three
    assert guard.mismatches["unknown"] == 1


def test_restrict_moves_a_default_envoy_lacks() -> None:
    snapshot = compile_config(
        "tiers: [{name: weak}, {name: strong}]\ndefault_tier: strong\nclassifier: v1\n"
        "classifiers: {v1: {default: strong}}\n"
    )
    restricted = restrict(snapshot, envoy_tiers("x:weak"))
    assert restricted is not None
    assert (restricted.default_tier, restricted.classifiers["v1"].default) == ("weak", "weak")
    assert restrict(snapshot, ()) is None


def test_a_long_fingerprint_is_cut() -> None:
    guard = RoutesGuard(lambda: TWO)
    guard.snapshot_for("x" * 10_000)
    assert len(guard.envoy) == MAX_FINGERPRINT


def test_guard_keeps_a_bounded_number_of_fingerprints() -> None:
    box = Box(TWO)
    guard = RoutesGuard(lambda: box.snapshot)
    for index in range(KEPT_FINGERPRINTS + 2):
        box.snapshot = config(f"[{{name: weak, model: m{index}}}]")
        guard.snapshot_for("")
    chosen = guard.snapshot_for(routes_fingerprint(TWO))
    assert chosen is not TWO  # forgotten: the current one, restricted to Envoy's tiers
    assert chosen.tiers is box.snapshot.tiers
    assert guard.mismatches["restricted"] == 1


def test_render_warns_on_tiers_without_backends_and_says_what_it_wrote(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "tiers: [{name: weak, model: a, backends: [{address: '127.0.0.1:9'}]},"
        " {name: strong, model: b}]\nclassifier: v1\nclassifiers: {v1: {default: weak}}\n"
    )
    out = tmp_path / "envoy.yaml"
    result = subprocess.run(
        [str(CASCADE), "render", "envoy", "--config", str(conf), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "warning: tier 'strong' has no backends: Envoy answers 503" in result.stderr
    assert "weak" not in result.stderr.split("warning:")[1].split("\n")[0].replace("'strong'", "")
    assert f"wrote the Envoy bootstrap to {out}" in result.stderr
    assert "tiers weak (1 backend), strong (0 backends)" in result.stderr
    assert routes_fingerprint(compile_config(conf.read_text())) in out.read_text()


def test_a_stream_picks_its_snapshot_by_metadata() -> None:
    from extproc.transport.grpcio import ExternalProcessor

    box = Box(TWO)
    guard = RoutesGuard(lambda: box.snapshot)
    servicer = ExternalProcessor(lambda: box.snapshot, None, routes=guard)
    box.snapshot = THREE
    session = servicer.session({headers.ROUTES_METADATA: routes_fingerprint(TWO)})
    assert session._processor.snapshot is TWO
    session.close()
