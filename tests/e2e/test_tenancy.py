"""Tenant isolation, tried with a tenant's own credentials (a ServiceAccount allowed Dockyard
objects in its namespace, nothing else): policy levels refused at apply by the webhook and by the
reconciler when it got in anyway, the VM's engine out of reach, other namespaces' Secrets too."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.providers import ProviderConfig, make_provider
from dockyard.providers.base import TAG_OWNER_UID
from tests.conftest import Kubectl
from tests.e2e.conftest import own_operator_namespace, tear_down_deployments
from tests.e2e.test_reconciler import condition
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]

LEVEL = "dockyard.dev/enforce"


def deployment(name: str, *containers: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "dockyard.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "provider": {"type": "local"},
            "jobs": [{"name": "j", "containers": list(containers)}],
        },
    }


def box(name: str, script: str = "sleep 100000", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "dockyard/busybox:1",
        "command": ["sh", "-c", f"trap 'exit 0' TERM; {script} & wait"],
        **fields,
    }


ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: dockyard-tenant}
rules:
- apiGroups: [dockyard.dev]
  resources: [deployments, jobs, disksnapshots]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [dockyard.dev]
  resources: [persistentdisks]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dockyard-tenant}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: dockyard-tenant}
subjects: [{kind: ServiceAccount, name: tenant}]
"""


class Tenant:
    """kubectl as the ServiceAccount ``tenant`` of one namespace: a token, no client cert."""

    def __init__(self, kubectl: Kubectl, kubeconfig: str, namespace: str, home: Path) -> None:
        self.namespace = namespace
        kubectl("create", "serviceaccount", "tenant", "-n", namespace)
        kubectl("apply", "-n", namespace, "-f", "-", input=ROLE)
        token = kubectl("create", "token", "tenant", "-n", namespace, "--duration=1h").stdout
        cluster = json.loads(kubectl("config", "view", "--raw", "-o", "json").stdout)["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster["cluster"]}],
            "users": [{"name": "tenant", "user": {"token": token.strip()}}],
            "contexts": [{"name": "t", "context": {"cluster": "c", "user": "tenant"}}],
            "current-context": "t",
        }
        self.config = home / f"tenant-{namespace}.kubeconfig"
        self.config.write_text(yaml.safe_dump(config))

    def __call__(self, *args: str, input: str | None = None) -> Any:
        command = ["kubectl", "--kubeconfig", str(self.config), "-n", self.namespace, *args]
        return subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=60, check=False
        )

    def apply(self, manifest: dict[str, Any], dry_run: bool = True) -> Any:
        extra = ["--dry-run=server"] if dry_run else []
        return self("apply", *extra, "-f", "-", input=yaml.safe_dump(manifest))


@pytest.fixture
def team(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tmp_path: Path, operator: Any
) -> Iterator[Tenant]:
    """A namespace watched by the shared operator, at level baseline, and its tenant."""
    name = f"{namespace_prefix}ta-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, f"{LEVEL}=baseline")
    yield Tenant(kubectl, kubeconfig, name, tmp_path)
    tear_down_deployments(kubectl, name)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def refused(result: Any, field: str, level: str) -> None:
    assert result.returncode != 0, result.stdout
    assert field in result.stderr and f"policy level {level}" in result.stderr, result.stderr


ROOT = {"bindVolumes": [{"hostPath": "/", "mountPath": "/vmroot"}]}
RUN_DIR = {"bindVolumes": [{"hostPath": "/dockyard/run", "mountPath": "/engine"}]}
DATA = {"bindVolumes": [{"hostPath": "/var/vcap/data/shared", "mountPath": "/shared"}]}


def test_each_level_refuses_at_apply_what_it_forbids_naming_the_field(
    team: Tenant, kubectl: Kubectl, admission_webhook: str
) -> None:
    field = "spec.jobs[0].containers[0]"
    for fields, where in (
        (ROOT, "bindVolumes[0].hostPath"),
        (RUN_DIR, "bindVolumes[0].hostPath"),
        ({"privileged": True}, "privileged"),
        ({"capAdd": ["SYS_ADMIN"]}, "capAdd[0]"),
    ):
        refused(team.apply(deployment("bad", box("a", **fields))), f"{field}.{where}", "baseline")
    assert team.apply(deployment("ok", box("a", **DATA))).returncode == 0

    # The tenant cannot choose its own level.
    relabel = team("label", "namespace", team.namespace, f"{LEVEL}=privileged", "--overwrite")
    assert relabel.returncode != 0 and "forbidden" in relabel.stderr.lower()

    kubectl("label", "namespace", team.namespace, f"{LEVEL}=restricted", "--overwrite")
    refused(
        team.apply(deployment("bad", box("a", user="1000", **DATA))),
        f"{field}.bindVolumes[0].hostPath",
        "restricted",
    )
    refused(team.apply(deployment("bad", box("a"))), f"{field}.user", "restricted")
    refused(team.apply(deployment("bad", box("a", user="root"))), f"{field}.user", "restricted")
    assert team.apply(deployment("ok", box("a", user="1000"))).returncode == 0

    kubectl("label", "namespace", team.namespace, f"{LEVEL}=privileged", "--overwrite")
    for fields in (ROOT, RUN_DIR, {"privileged": True}, {"capAdd": ["SYS_ADMIN"]}):
        assert team.apply(deployment("fine", box("a", **fields))).returncode == 0


def test_what_got_in_while_the_webhook_was_away_is_stalled_and_runs_nothing(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tmp_path: Path
) -> None:
    """Written while nothing checked it (no webhook, the level allowing it then), then the
    namespace is tightened: the reconciler refuses it, starts nothing, and says why."""
    with own_operator_namespace(kubectl, kubeconfig, namespace_prefix, "p", tmp_path) as (
        own,
        namespace,
        get_object,
    ):
        kubectl("label", "namespace", namespace, f"{LEVEL}=privileged")
        tenant = Tenant(kubectl, kubeconfig, namespace, tmp_path)
        made = tenant.apply(deployment("slipped", box("a", **RUN_DIR)), dry_run=False)
        assert made.returncode == 0, made.stderr
        kubectl("label", "namespace", namespace, f"{LEVEL}=baseline", "--overwrite")
        own.start()

        def stalled() -> dict[str, Any] | None:
            found = condition(get_object("dyd", "slipped"), "Stalled")
            return found if found and found["status"] == "True" else None

        said = wait_for(stalled, timeout=60, what="the Deployment Stalled")
        assert said["reason"] == "PolicyViolation", said
        assert "bindVolumes[0].hostPath" in said["message"], said
        assert "policy level baseline" in said["message"], said
        jobs = kubectl("get", "dyj", "-n", namespace, "-o", "name").stdout.strip()
        assert not jobs, f"a Job was made for a refused Deployment: {jobs}"
        events = kubectl("get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}")
        assert "PolicyViolation" in events.stdout


def test_a_container_cannot_reach_its_vm_engine_nor_another_namespace_secret(
    team: Tenant, kubectl: Kubectl
) -> None:
    probe = (
        # a symlink on the VM, under a host path baseline allows, to the engine's run dir
        "ln -sfn /dockyard/run /shared/engine;"
        " gw=$(ip route | awk '/default/ {print $3}');"
        " if [ -e /dockyard/run/docker.sock ] || nc -w 2 $gw 2375 </dev/null"
        " || nc -w 2 $gw 2376 </dev/null;"
        " then echo ENGINE-REACHED; else echo ENGINE-UNREACHABLE; fi; sleep 100000"
    )
    planter = box("planter", probe, **DATA)
    made = team.apply(deployment("probe", planter), dry_run=False)
    assert made.returncode == 0, made.stderr

    def job() -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            kubectl("get", "dyj", "probe-j", "-n", team.namespace, "-o", "json").stdout
        )
        return found

    local = make_provider(ProviderConfig(type="local"))

    def planted_log() -> str | None:
        (vm,) = local.find_vms({TAG_OWNER_UID: job()["metadata"]["uid"]})
        engine = local.docker_client(vm.id)
        (found,) = engine.containers.list(filters={"label": "dockyard.dev/container=planter"})
        said = found.logs().decode()
        return said if "ENGINE-" in said else None

    logged = wait_for(planted_log, timeout=120, what="the probe's verdict")
    assert "ENGINE-UNREACHABLE" in logged and "ENGINE-REACHED" not in logged, logged

    # A second container binds the symlink: the runtime follows it to the engine, and refuses.
    follower = box(
        "follower",
        bindVolumes=[{"hostPath": "/var/vcap/data/shared/engine", "mountPath": "/engine"}],
    )
    assert team.apply(deployment("probe", planter, follower), dry_run=False).returncode == 0

    def refusal() -> dict[str, Any] | None:
        found = condition(job(), "Stalled")
        return found if found and found["status"] == "True" else None

    said = wait_for(refusal, timeout=120, what="the follower refused")
    assert "leads to /dockyard/run" in said["message"], said
    (vm,) = local.find_vms({TAG_OWNER_UID: job()["metadata"]["uid"]})
    engine = local.docker_client(vm.id)
    running = engine.containers.list(filters={"label": "dockyard.dev/container=follower"})
    assert not running, "a container bound the engine's run directory"

    # A Secret of another namespace, named from this one, is not found here.
    other = f"{team.namespace}-b"
    kubectl("create", "namespace", other)
    try:
        kubectl("create", "secret", "generic", "token", "-n", other, "--from-literal=v=s3cr3t-b")
        ref = {"secretKeyRef": {"name": "token", "key": "v"}}
        peek = box("peek", "echo $V", env=[{"name": "V", "valueFrom": ref}])
        assert team.apply(deployment("peek", peek), dry_run=False).returncode == 0

        def said_missing() -> str | None:
            job = json.loads(
                kubectl("get", "dyj", "peek-j", "-n", team.namespace, "-o", "json").stdout
            )
            found = condition(job, "Stalled")
            said = found["message"] if found and found["status"] == "True" else ""
            return said if "of Secret 'token' does not exist" in said else None

        told = wait_for(said_missing, timeout=60, what="the missing Secret said")
        assert "s3cr3t-b" not in told
        assert team("get", "secret", "token").returncode != 0  # nor through kubectl
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)
