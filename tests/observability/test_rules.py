"""Alert rules: valid for promtool, every alert unit-tested both ways, and written against the
metrics and labels Dockyard really exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.observability.metrics import REGISTRY
from tests.observability.conftest import PROMTOOL_TESTS, REPO, RULES, run, tool

ALERTS = {
    "DockyardReconcileErrors",
    "DockyardDeploymentNotReady",
    "DockyardContainerCrashLooping",
    "DockyardResurrectionMeltdown",
    "DockyardVMResurrectionFailing",
    "DockyardDiskResizeFailed",
    "DockyardOperatorDown",
}
# Labels Prometheus adds to every scraped series (the ServiceMonitor's job and instance).
TARGET_LABELS = {"job", "instance"}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool() -> str:
    return tool("promtool", "prometheus")


def exported_labels() -> dict[str, set[str]]:
    """Every series name Dockyard exports (with _total, _bucket...) -> its label names."""
    result: dict[str, set[str]] = {}
    for name, collector in REGISTRY._names_to_collectors.items():
        labels = set(getattr(collector, "_labelnames", ()))
        result[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return result


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = run(promtool(), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_every_alert_is_there_with_severity_summary_description_and_runbook() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) == ALERTS
    runbook = (REPO / "docs" / "runbook.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url.endswith("/docs/runbook.md#" + name.lower()), url
        assert name.lower() in headings, f"docs/runbook.md has no '## {name}' section"


def test_rules_use_only_exported_metrics_and_their_labels() -> None:
    """A renamed metric or label would silently make an alert unable to fire."""
    exported = exported_labels()
    for rule in rules():
        expr = rule["expr"]
        names = set(re.findall(r"\b(dockyard_[a-z_]+)", expr))
        for name in names:
            assert name in exported, f"{rule['alert']}: {name} is not exported"
        available = set().union(TARGET_LABELS, *(exported[n] for n in names))
        grouped: set[str] = set()
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            grouped |= {label.strip() for label in clause.split(",") if label.strip()}
        matched = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        if names:
            assert grouped | matched <= available, f"{rule['alert']}: not on {names}"
        # What an annotation can print: the grouping labels, or all of them without grouping.
        kept = grouped if " by " in expr or "by(" in expr else available
        for template in re.findall(r"\$labels\.([a-z_]+)", yaml.safe_dump(rule["annotations"])):
            assert template in kept, f"{rule['alert']}: $labels.{template} is lost"


def test_promtool_unit_tests_pass() -> None:
    files = sorted(PROMTOOL_TESTS.glob("*.yaml"))
    assert files
    result = run(promtool(), "test", "rules", *map(str, files), cwd=PROMTOOL_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def _expectations(path: Path) -> list[tuple[str, bool]]:
    document = yaml.safe_load(path.read_text())
    return [
        (case["alertname"], bool(case.get("exp_alerts")))
        for test in document["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_must_not() -> None:
    seen = [e for path in sorted(PROMTOOL_TESTS.glob("*.yaml")) for e in _expectations(path)]
    for alert in ALERTS:
        assert (alert, True) in seen, f"no promtool test where {alert} fires"
        assert (alert, False) in seen, f"no promtool test where {alert} stays quiet"


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, alert: str) -> None:
    """Mutation check: with this alert's expression made never true, its tests must fail."""
    text = RULES.read_text()
    document = yaml.safe_load(text)
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = f"({rule['expr']}) and on() vector(0) > 1"
    broken = tmp_path / "deploy" / "monitoring" / "rules.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text(yaml.safe_dump(document, sort_keys=False))
    tests = tmp_path / "tests" / "observability" / "promtool"
    tests.mkdir(parents=True)
    for path in PROMTOOL_TESTS.glob("*.yaml"):
        (tests / path.name).write_text(path.read_text())
    result = run(promtool(), "test", "rules", *map(str, sorted(tests.glob("*.yaml"))), cwd=tests)
    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr
