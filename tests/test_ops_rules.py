"""The operators' files in docs/ops: Prometheus alert rules (promtool's own check and unit
tests: for each rule, series that must fire it and series that must not) and the Grafana
dashboard, whose every query names only series Nexes exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import orjson
import prometheus_client
import yaml

import nexes.auth.ratelimit
import nexes.jobs.metrics
import nexes.metrics
import nexes.search.metrics

OPS = Path(__file__).resolve().parent.parent / "docs" / "ops"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
METRIC = re.compile(r"\b(nexes_[a-z0-9_]+)")


def exported() -> set[str]:
    """Every series name Nexes' metrics modules define (in this process's default registry)."""
    assert nexes.metrics and nexes.search.metrics and nexes.jobs.metrics and nexes.auth.ratelimit
    names = set()
    for family in prometheus_client.REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ())}
    return {n for n in names if n.startswith("nexes_")}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: infra/stack up installs Debian's prometheus package"
    return subprocess.run([tool, *args], cwd=OPS, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_alert_rules() -> None:
    done = promtool("check", "rules", "prometheus-rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_promtool_unit_tests_fire_each_rule_on_its_series_and_not_on_healthy_ones() -> None:
    rules = yaml.safe_load((OPS / "prometheus-rules.yml").read_text())
    tests = yaml.safe_load((OPS / "prometheus-rules-test.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert fired == alerts  # every rule has series that must fire it
    done = promtool("test", "rules", "prometheus-rules-test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alert_rules_and_the_dashboard_name_only_series_nexes_exports() -> None:
    names = exported()
    rules = yaml.safe_load((OPS / "prometheus-rules.yml").read_text())
    rule_metrics = {m for group in rules["groups"] for rule in group["rules"] for m in METRIC.findall(rule["expr"])}
    dashboard = orjson.loads((OPS / "grafana-dashboard.json").read_bytes())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    dashboard_metrics = {m for query in queries for m in METRIC.findall(query)}
    assert rule_metrics and dashboard_metrics
    assert rule_metrics - names == set()
    assert dashboard_metrics - names == set()
    # The dashboard shows the series: requests, errors, pools, search, jobs, workers.
    for wanted in (
        "nexes_graphql_request_duration_seconds_bucket",
        "nexes_graphql_errors_total",
        "nexes_http_requests_total",
        "nexes_pool_connections",
        "nexes_replica_lag_seconds",
        "nexes_search_sync_lag_seconds",
        "nexes_search_breaker_open",
        "nexes_import_jobs",
        "nexes_import_rows_total",
        "nexes_worker_messages_total",
        "nexes_reconcile_drift_total",
        "nexes_partition_horizon_seconds",
    ):
        assert wanted in dashboard_metrics, wanted
