"""`kubectl delete namespace` with Deployments in it, as users tear a tenant down: the operator
(watching namespaces by a pattern) tears the Jobs down while the namespace terminates — their
VMs and disks go, and the namespace does not hang on the Jobs' finalizers."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import GetObject
from tests.e2e.test_monitor import (  # noqa: F401 (local: a fixture)
    DISK,
    WRITER,
    local,
    manifest,
    uses_operator,
    wait_ready,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]


@uses_operator
def test_deleting_the_namespace_tears_its_deployments_down_with_their_vms_and_disks(
    kubectl: Kubectl,
    namespace: str,
    get_object: GetObject,
    local: Any,  # noqa: F811
) -> None:
    job = {"name": "store", "instances": 2, "persistentDisk": DISK, "containers": [WRITER]}
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("gone", job))
    wait_ready(get_object, "dyd", "gone")
    uid = get_object("dyj", "gone-store")["metadata"]["uid"]
    assert len(local.find_vms({"owner-uid": uid})) == 2
    disk_tags = [{"disk": f"{namespace}.gone-store-{index}"} for index in (0, 1)]
    assert all(local.find_disks(tags) for tags in disk_tags)

    kubectl("delete", "namespace", namespace, "--wait=false")

    def namespace_gone() -> bool:
        found = subprocess.run(
            ["kubectl", "get", "namespace", namespace, "-o", "name"],
            capture_output=True,
            text=True,
            check=False,
        )
        return found.returncode != 0 and "NotFound" in found.stderr

    wait_for(namespace_gone, timeout=180, what=f"namespace {namespace} deleted")
    assert local.find_vms({"owner-uid": uid}) == [], "the namespace's VMs were left behind"
    assert not any(local.find_disks(tags) for tags in disk_tags), "its disks were left behind"
