"""deploy/: generated files are fresh, and `kubectl kustomize` renders what `kubectl apply -k`
would install — checked for the properties the operator and Prometheus rely on."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.conftest import REPO, RULES, kustomize, one, run, tool

NAMESPACE = "dockyard-system"
KINDS = ("deployments", "jobs", "persistentdisks", "disksnapshots")


def test_generated_files_are_up_to_date() -> None:
    result = run(sys.executable, str(REPO / "hack" / "gen_deploy.py"), "--check")
    assert result.returncode == 0, result.stderr


def test_base_installs_the_crds_exactly_as_generated(base_objects: list[dict[str, Any]]) -> None:
    crds = {
        o["metadata"]["name"]: copy.deepcopy(o)
        for o in base_objects
        if o["kind"] == "CustomResourceDefinition"
    }
    sources = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "crds").glob("*.yaml")}
    assert set(crds) == set(sources) == {f"{kind}.dockyard.dev" for kind in KINDS}
    for name, crd in crds.items():
        # kustomize adds the part-of label; everything else is the generated CRD.
        crd["metadata"]["labels"].pop("app.kubernetes.io/part-of")
        if not crd["metadata"]["labels"]:
            del crd["metadata"]["labels"]
        assert crd == sources[name], name


def test_everything_namespaced_lives_in_dockyard_system(base_objects: list[dict[str, Any]]) -> None:
    one(base_objects, "Namespace", NAMESPACE)
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in base_objects:
        expected = None if obj["kind"] in cluster_scoped else NAMESPACE
        assert obj["metadata"].get("namespace") == expected, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dockyard"


def test_cluster_role_is_least_privilege(base_objects: list[dict[str, Any]]) -> None:
    role = one(base_objects, "ClusterRole", "dockyard")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    crud = {"get", "list", "watch", "create", "update", "patch", "delete"}
    expected = {
        **{("dockyard.dev", kind): crud for kind in KINDS},
        **{("dockyard.dev", f"{kind}/status"): {"get", "update", "patch"} for kind in KINDS},
        **{("dockyard.dev", f"{kind}/finalizers"): {"update"} for kind in KINDS},
        ("", "events"): {"create", "patch"},
        ("", "namespaces"): {"get", "list", "watch"},
        ("", "configmaps"): {"list", "watch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        **{
            ("admissionregistration.k8s.io", f"{kind}webhookconfigurations"): {
                "get",
                "create",
                "patch",
            }
            for kind in ("validating", "mutating")
        },
    }
    assert granted == expected
    assert not any("*" in key or "*" in verbs for key, verbs in granted.items())

    # Secrets in a role of their own: a scoped operator binds it only where it works.
    secrets = one(base_objects, "ClusterRole", "dockyard-secrets")
    assert secrets["rules"] == [
        {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"]}
    ]
    secrets_binding = one(base_objects, "ClusterRoleBinding", "dockyard-secrets")
    assert secrets_binding["roleRef"]["name"] == "dockyard-secrets"

    binding = one(base_objects, "ClusterRoleBinding", "dockyard")
    account = one(base_objects, "ServiceAccount", "dockyard")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "dockyard",
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "dockyard",
            "namespace": account["metadata"]["namespace"],
        }
    ]


def _operator(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = one(objects, "Deployment", "dockyard")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_operator_deployment_is_a_hardened_probed_hot_standby_pair(
    base_objects: list[dict[str, Any]],
) -> None:
    deployment, container = _operator(base_objects)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    # Two replicas sharing the leader lease; a rolling update never makes two active (docs/ha.md).
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    assert "--leader-lease=dockyard-system/dockyard" in container["args"]
    assert pod["serviceAccountName"] == "dockyard"
    assert container["image"] == "dockyard/operator:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # /tmp is the only writable place: an emptyDir.
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and "emptyDir" in volume

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    # Alive on a standby too; Ready (so reached by the webhook's Service) only when active.
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "probes"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert f"--probe-port={ports['probes']}" in container["args"]
    # The webhook is served where its Service, which the configuration names, sends the calls.
    assert int(env["DOCKYARD_WEBHOOK_PORT"]) == ports["webhook"]
    webhook = one(base_objects, "Service", "dockyard-webhook")
    assert env["DOCKYARD_WEBHOOK_SERVICE"] == f"{NAMESPACE}/dockyard-webhook"
    assert webhook["spec"]["ports"] == [
        {"name": "webhook", "port": ports["webhook"], "targetPort": "webhook"}
    ]


def test_operator_args_are_what_the_cli_understands(
    base_objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Deployment's args through the real `dockyard run` parser: metrics where the Service
    points, probes where the probes look, the leader lease, all namespaces."""
    from dockyard import cli
    from dockyard.handlers import main as handlers_main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(handlers_main, "run_operator", lambda **kwargs: seen.update(kwargs) or 0)
    _, container = _operator(base_objects)
    assert cli.main(["run", *container["args"]]) == 0
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    timings = seen.pop("lease_timings")
    assert (timings.duration, timings.renew_deadline, timings.renew_every) == (6.0, 4.0, 2.0)
    assert seen == {
        "namespaces": (),  # all of them
        "metrics_port": ports["metrics"],
        "liveness": f"http://0.0.0.0:{ports['healthz']}/healthz",
        "pools": "",  # the default action pools per provider
        "metrics_created": False,  # no _created series
        "leader_lease": "dockyard-system/dockyard",
        "probe_port": ports["probes"],
    }


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_metrics_service_reaches_the_operator_port(base_objects: list[dict[str, Any]]) -> None:
    deployment, container = _operator(base_objects)
    service = one(base_objects, "Service", "dockyard-metrics")
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "dockyard"
    assert _selects(
        service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    assert _selects(
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"],
    )
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    assert "metrics" in {p["name"] for p in container["ports"]}


def test_service_monitor_scrapes_the_metrics_service_as_job_dockyard(
    monitoring_objects: list[dict[str, Any]],
) -> None:
    monitor = one(monitoring_objects, "ServiceMonitor", "dockyard")
    services = [o for o in monitoring_objects if o["kind"] == "Service"]
    selected = [
        s
        for s in services
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        and s["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    ]
    assert [s["metadata"]["name"] for s in selected] == ["dockyard-metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["honorLabels"] is True  # our namespace/container labels name objects
    # The job label DockyardOperatorDown looks for: the Service's jobLabel value.
    job = selected[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert 'up{job="' + job + '"}' in RULES.read_text()
    assert monitor["metadata"]["labels"]["release"]
    # The overlay is the base plus the two monitoring objects.


def test_monitoring_overlay_is_the_base_plus_two_objects(
    base_objects: list[dict[str, Any]], monitoring_objects: list[dict[str, Any]]
) -> None:
    def names(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects)

    extra = [("PrometheusRule", "dockyard"), ("ServiceMonitor", "dockyard")]
    assert names(monitoring_objects) == sorted(names(base_objects) + extra)


def test_prometheus_rule_embeds_the_rules_file_and_promtool_accepts_it(
    monitoring_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    rule = one(monitoring_objects, "PrometheusRule", "dockyard")
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    extracted = tmp_path / "rules.yaml"
    extracted.write_text(yaml.safe_dump(rule["spec"]))
    result = run(tool("promtool", "prometheus"), "check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_overlay_is_the_base_with_the_hosts_engine_root_and_devices(
    base_objects: list[dict[str, Any]],
) -> None:
    """deploy/local/: the same objects, the operator root and privileged beside the node's
    Docker (socket, the provider's default root with its mounts shared both ways, /dev) in a
    privileged namespace; nothing else differs from the base's Deployment."""
    from dockyard.providers.local.provider import DEFAULT_ROOT

    local = kustomize(REPO / "deploy" / "local")

    def names(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects)

    assert names(local) == names(base_objects)
    labels = one(local, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    deployment, container = _operator(local)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 0
    assert container["securityContext"]["privileged"] is True
    assert "capabilities" not in container["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/var/run/docker.sock", DEFAULT_ROOT, "/dev"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert mounts[DEFAULT_ROOT]["mountPropagation"] == "Bidirectional"
    assert mounts["/tmp"]["name"] == "tmp"  # the base's writable /tmp stays

    _, base_container = _operator(base_objects)
    for key in ("image", "args", "env", "ports", "livenessProbe", "readinessProbe"):
        assert container[key] == base_container[key], key
