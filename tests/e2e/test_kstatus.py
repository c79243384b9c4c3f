"""What GitOps tools see: every version of the Jobs and the Deployment, as a watch delivers them,
through the real kstatus library (sigs.k8s.io/cli-utils, built by hack/kstatus/build.sh) —
through creation, a change of an upstream, and a failure that will not heal. `Current` must
never come before the work is done, and a failure that will not heal must end as `Failed`."""

from __future__ import annotations

import json
import subprocess
import textwrap
from typing import Any

import pytest

from tests.conftest import REPO, Kubectl
from tests.e2e.conftest import GetObject
from tests.e2e.test_monitor import started
from tests.e2e.test_reconciler import wait_ready
from tests.e2e.watching import Version, watched
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]

MANIFEST = textwrap.dedent(
    """
    apiVersion: dockyard.dev/v1alpha1
    kind: Deployment
    metadata: {name: gitops}
    spec:
      provider: {type: local}
      jobs:
      - name: db
        instances: 1
        containers:
        - {name: store, image: "dockyard/busybox:1", command: [sh, -c, "trap 'exit 0' TERM; sleep 100000 & wait"], env: [{name: V, value: "1"}]}
      - name: web
        instances: 2
        containers:
        - {name: api, image: "dockyard/busybox:1", command: [sh, -c, "trap 'exit 0' TERM; sleep 100000 & wait"], dependsOn: [db/store]}
        - {name: side, image: "dockyard/busybox:1", command: [sh, -c, "trap 'exit 0' TERM; sleep 100000 & wait"]}
    """
)
BROKEN = textwrap.dedent(
    """
    apiVersion: dockyard.dev/v1alpha1
    kind: Deployment
    metadata: {name: broken}
    spec:
      provider: {type: local}
      jobs:
      - name: app
        instances: 1
        containers:
        - {name: app, image: "dockyard/no-such-image:1"}
    """
)


@pytest.fixture(scope="session")
def kstatus() -> str:
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "kstatus" / "build.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return done.stdout.strip().splitlines()[-1]


def latest_start(job: dict[str, Any], container: str | None = None) -> float:
    return max(
        started(c)
        for i in job["status"]["instances"]
        for c in i["containers"]
        if c.get("startedAt") and container in (None, c["name"])
    )


def current_not_before(seen: list[Version], moment: float, what: str) -> None:
    for version in seen:
        if version.kstatus == "Current":
            assert version.arrived >= moment, (
                f"{what} was Current {moment - version.arrived:.2f}s before the work was done: "
                f"{json.dumps(version.body.get('status'))[:600]}"
            )


def test_kstatus_is_never_current_early_through_create_and_change(
    kubectl: Kubectl, namespace: str, get_object: GetObject, kubeconfig: str, kstatus: str
) -> None:
    with watched(kubeconfig, namespace, kstatus) as versions:
        kubectl("apply", "-n", namespace, "-f", "-", input=MANIFEST)
        wait_ready(get_object, "dyd", "gitops")
        created = {name: get_object("dyj", f"gitops-{name}") for name in ("db", "web")}
        changed_at = created["web"]["status"]["instances"][0]["containers"][0]["startedAt"]
        patch = [{"op": "replace", "path": "/spec/jobs/0/containers/0/env/0/value", "value": "2"}]
        kubectl("patch", "dyd", "gitops", "-n", namespace, "--type=json", "-p", json.dumps(patch))
        patched = versions.of("Deployment", "gitops")[-1].arrived

        def cascaded() -> dict[str, Any] | None:
            web = get_object("dyj", "gitops-web")
            api = [
                c for i in web["status"]["instances"] for c in i["containers"] if c["name"] == "api"
            ]
            return (
                web if all(c["startedAt"] != changed_at and c.get("ready") for c in api) else None
            )

        wait_for(cascaded, timeout=120, what="api restarted after the new store")
        wait_ready(get_object, "dyd", "gitops")
        final = {name: get_object("dyj", f"gitops-{name}") for name in ("db", "web")}
        wait_for(
            lambda: versions.of("Deployment", "gitops")[-1].kstatus == "Current",
            timeout=30,
            what="the Deployment Current again",
        )

    for kind, name in (("Job", "gitops-db"), ("Job", "gitops-web"), ("Deployment", "gitops")):
        seen = versions.of(kind, name)
        assert seen, f"no version of {kind} {name} seen"
        assert seen[0].kstatus == "InProgress", f"{kind} {name} started as {seen[0].kstatus}"
        assert "Current" in {v.kstatus for v in seen}
        assert not {v.kstatus for v in seen} & {"Failed", "Unknown", ""}
    # Create: Current only once every container of the Job runs.
    creation = [v for v in versions.of("Job", "gitops-web") if v.arrived < patched]
    current_not_before(creation, latest_start(created["web"]), "the web Job")
    # Change of the upstream (db): the dependents' Job and the Deployment are not Current
    # again before the dependents restarted.
    after = [v for v in versions.of("Job", "gitops-web") if v.arrived >= patched]
    assert any(v.kstatus == "InProgress" for v in after), "web never said it was working"
    current_not_before(after, latest_start(final["web"], "api"), "the web Job")
    deployment = [v for v in versions.of("Deployment", "gitops") if v.arrived >= patched]
    assert deployment[0].kstatus == "InProgress"
    current_not_before(deployment, latest_start(final["web"], "api"), "the Deployment")


def test_a_failure_that_will_not_heal_ends_as_failed_and_never_current(
    kubectl: Kubectl, namespace: str, kubeconfig: str, kstatus: str
) -> None:
    with watched(kubeconfig, namespace, kstatus) as versions:
        kubectl("apply", "-n", namespace, "-f", "-", input=BROKEN)
        for kind, name in (("Job", "broken-app"), ("Deployment", "broken")):
            wait_for(
                lambda kind=kind, name=name: any(  # type: ignore[misc]
                    v.kstatus == "Failed" for v in versions.of(kind, name)
                ),
                timeout=120,
                what=f"{kind} {name} Failed",
            )
    job = versions.of("Job", "broken-app")
    assert "Current" not in {v.kstatus for v in versions.of("Deployment", "broken") + job}
    failed = next(v for v in job if v.kstatus == "Failed")
    stalled = failed.condition("Stalled")
    assert stalled["reason"] == "Refused", stalled
    assert "dockyard/no-such-image:1" in stalled["message"], stalled
