"""The PrometheusRule passes `promtool check rules` and its unit tests; the dashboard and the
rules use only metrics the server exports or the rules record; the ServiceMonitor finds the
classifier's metrics port."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import K8S, ROUTING_OVERLAYS, container, find, one
from tests.k8s.kustomize import Obj

PROMTOOL_TESTS = Path(__file__).parent / "promtool"
DASHBOARD = K8S / "monitoring" / "grafana-dashboard.json"
RULE_MANIFEST = K8S / "monitoring" / "prometheusrule.yaml"

#: What the server exports (the telemetry contract); histograms also have _bucket/_sum/_count.
COUNTERS_AND_GAUGES = {
    "cascade_decisions_total",
    "cascade_parse_failures_total",
    "cascade_classifier_errors_total",
    "cascade_config_reloads_total",
    "cascade_inflight_streams",
    "cascade_responses_total",
    "cascade_fallbacks_total",
    "cascade_tokens_total",
    "cascade_cost_dollars_total",
    "cascade_tier_price_per_hour_dollars",
    "cascade_misroute_suspected_total",
    "cascade_feedback_total",
    "cascade_routes_in_sync",
    "cascade_routes_mismatch_total",
    "cascade_cache_lookups_total",
    "cascade_cache_saved_usd_total",
    "cascade_gate_verdicts_total",
    "cascade_gate_escalations_total",
    "cascade_gate_findings_total",
}
HISTOGRAMS = {
    "cascade_gate_confidence",
    "cascade_classify_duration_seconds",
    "cascade_ttft_seconds",
    "cascade_response_duration_seconds",
}
#: What `cascade judge --push-gateway` pushes (extproc/tuning/judge_metrics.py), not the server.
JUDGE_EXPORTED = {
    "cascade_judge_verdicts_total",
    "cascade_judge_swap_checks_total",
    "cascade_judge_unjudged",
    "cascade_judge_last_run_cost",
    "cascade_judge_last_run_timestamp_seconds",
}
EXPORTED = (
    COUNTERS_AND_GAUGES
    | JUDGE_EXPORTED
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | {"up"}
)

PROMQL_WORDS = {
    # aggregations, functions and keywords that may appear bare in an expression
    "sum", "avg", "min", "max", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "bool", "offset", "rate", "increase", "irate",
    "histogram_quantile", "avg_over_time", "sum_over_time", "max_over_time", "abs", "vector",
    "absent", "round", "clamp_min", "clamp_max", "topk", "bottomk", "scalar", "time",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    text = re.sub(r"\boffset\s+\w+", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()[:1]
        if word in PROMQL_WORDS or following == "(":
            continue
        names.add(word)
    return names


def rule_spec() -> dict[str, object]:
    return yaml.safe_load(RULE_MANIFEST.read_text())["spec"]


def rules() -> list[dict[str, str]]:
    return [rule for group in rule_spec()["groups"] for rule in group["rules"]]  # type: ignore[index]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


# -- promtool ------------------------------------------------------------------------------------

requires_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)"
)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as a plain rules file, beside copies of the unit tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec(), sort_keys=False))
    for test in PROMTOOL_TESTS.glob("*_test.yaml"):
        shutil.copy(test, tmp_path / test.name)
    return tmp_path


@requires_promtool
def test_promtool_check_rules(rules_dir: Path) -> None:
    result = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@requires_promtool
def test_promtool_unit_tests(rules_dir: Path) -> None:
    tests = sorted(p.name for p in rules_dir.glob("*_test.yaml"))
    assert tests == ["budget_test.yaml", "gate_test.yaml", "quality_test.yaml", "routing_test.yaml"]
    result = promtool("test", "rules", *tests, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


@requires_promtool
def test_unit_tests_fail_when_a_threshold_changes(rules_dir: Path) -> None:
    # The budget tests must depend on the parameters: a bigger daily budget breaks them.
    text = (rules_dir / "rules.yaml").read_text()
    assert "expr: vector(1000)" in text
    (rules_dir / "rules.yaml").write_text(text.replace("expr: vector(1000)", "expr: vector(2000)"))
    result = promtool("test", "rules", "budget_test.yaml", cwd=rules_dir)
    assert result.returncode != 0
    assert "CascadeDailyBudgetNearlySpent" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts >= {
        "CascadeDailyBudgetNearlySpent",
        "CascadeMonthlyBudgetNearlySpent",
        "CascadeWeeklyCostDrift",
        "CascadeWeakShareOutOfBand",
        "CascadeMisrouteRateHigh",
        "CascadeClassifierErrors",
        "CascadeRoutesOutOfSync",
        "CascadeJudgedLossRateHigh",
        "CascadeJudgedLossRateRising",
        "CascadeGateEscalationRateHigh",
    }
    firing: set[str] = set()
    silent: set[str] = set()
    for path in PROMTOOL_TESTS.glob("*_test.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert firing == alerts
    assert silent == alerts


def test_thresholds_are_parameters() -> None:
    params = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    params = {k: v for k, v in params.items() if k.startswith("cascade:param:")}
    assert params["cascade:param:daily_budget_alert_ratio"] == "vector(0.8)"
    assert params["cascade:param:monthly_budget_alert_ratio"] == "vector(0.9)"
    assert params["cascade:param:weekly_cost_drift_ratio"] == "vector(0.2)"
    assert params["cascade:param:weak_share_min"] == "vector(0.6)"
    assert params["cascade:param:weak_share_max"] == "vector(0.7)"
    assert params["cascade:param:misroute_ratio_max"] == "vector(0.05)"
    assert params["cascade:param:gate_escalation_ratio_max"] == "vector(0.05)"
    # Alerts compare with the parameters, never with a number written into the alert.
    for rule in rules():
        # the two without a threshold: nothing scraped, and a yes/no condition
        if "alert" in rule and rule["alert"] not in {
            "CascadeClassifierAbsent",
            "CascadeRoutesOutOfSync",
        }:
            assert "cascade:param:" in rule["expr"], rule["alert"]
            assert not re.search(r"[<>]=?\s*[0-9]", rule["expr"]), rule["alert"]


# -- metric names ---------------------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (tier, le) (rate(cascade_ttft_seconds_bucket{a="b c"}'
        "[$__rate_interval]))) / on () group_left () cascade:x offset 7d"
    )
    assert metric_names(expr) == {"cascade_ttft_seconds_bucket", "cascade:x"}


def test_rules_use_only_known_metrics() -> None:
    known = EXPORTED | recorded()
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"


def test_dashboard_panels() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "cascade-router"
    titles = [panel["title"] for panel in board["panels"]]
    for wanted in (
        "Tier mix",
        "Cost trend per tier ($/h)",
        "Time to first token, p95 per tier",
        "Decisions per classifier version",
        "Fallbacks (answered by another tier)",
        "Errors",
    ):
        assert wanted in titles
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"


def test_dashboard_uses_only_known_metrics() -> None:
    known = EXPORTED | recorded()
    used: set[str] = set()
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, title
        assert not names - known, f"{title}: {names - known}"
        used |= names
    # Each exported family shows up somewhere.
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families >= HISTOGRAMS
    assert (
        COUNTERS_AND_GAUGES - {"cascade_tier_price_per_hour_dollars", "cascade_cost_dollars_total"}
        <= families
    )


@requires_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    # promtool parses every query as a recording rule (Grafana's $__ variables substituted).
    exprs = [expr for _, expr in dashboard_exprs()]
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:query{i}", "expr": expr.replace("$__rate_interval", "5m")}
            for i, expr in enumerate(exprs)
        ],
    }
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    result = promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_judge_names_match_cascade_judge() -> None:
    from extproc.tuning import judge_metrics

    defined = {
        v for v in vars(judge_metrics).values() if isinstance(v, str) and v.startswith("cascade_")
    }
    assert defined == JUDGE_EXPORTED


def test_exported_names_match_the_server() -> None:
    from extproc.app import cache_metrics, routes_metrics
    from extproc.telemetry import gate_telemetry, metrics

    defined = {
        v
        for module in (metrics, cache_metrics, routes_metrics, gate_telemetry)
        for v in vars(module).values()
        if isinstance(v, str) and v.startswith("cascade_")
    }
    assert defined >= COUNTERS_AND_GAUGES | HISTOGRAMS


# -- ServiceMonitor -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ROUTING_OVERLAYS)
def test_service_monitor_selects_the_metrics_port(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    monitor = one(rendered["monitoring"], "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        svc
        for svc in find(rendered[overlay], "Service")
        if selector.items() <= svc["metadata"].get("labels", {}).items()
    ]
    assert [svc["metadata"]["name"] for svc in services] == ["cascade-classifier"]
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    deployment = one(rendered[overlay], "Deployment", "cascade-classifier")
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert ports[port["targetPort"]] == port["port"] == 9464
    args = container(deployment)["args"]
    assert args[args.index("--metrics-listen") + 1].endswith(f":{port['port']}")
    # The alert on absent targets uses the job label, which is the Service's name.
    absent = next(r for r in rules() if r.get("alert") == "CascadeClassifierAbsent")
    assert f'job="{services[0]["metadata"]["name"]}"' in absent["expr"]
