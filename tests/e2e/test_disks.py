"""Disks are never lost, and their records tell the truth (issue 14), end to end on the local
provider with the real operator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import GetObject, own_operator_namespace
from tests.e2e.test_monitor import events
from tests.e2e.test_reconciler import STORE, Store, deployment, wait_ready
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]

RETAINED = STORE.replace("reclaimPolicy: Delete", "reclaimPolicy: Retain")


def record(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    found = kubectl("get", "dypd", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def test_a_grown_retained_disk_survives_the_old_manifest_applied_again(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    """GitOps: the Deployment is deleted and the manifest in git (the old, smaller size) is
    applied again. The disk comes back with its data at the size it has; nothing shrinks."""
    original_manifest = deployment("again", RETAINED)
    kubectl("apply", "-n", namespace, "-f", "-", input=original_manifest)
    wait_ready(get_object, "dyd", "again")
    store = Store(namespace, "again", get_object)
    data = wait_for(store.checksum, timeout=30, what="data written")
    store.grow(kubectl, namespace, "again")
    wait_for(
        lambda: store.provider.find_disks(store.disk_tags)[0].size_mib >= 128,
        timeout=180,
        what="the disk grown",
    )
    wait_ready(get_object, "dyd", "again")

    kubectl("delete", "dyd", "again", "-n", namespace, "--timeout=120s")
    wait_for(
        lambda: not kubectl("get", "dyj", "-n", namespace, "-o", "name").stdout.strip(),
        timeout=120,
        what="the Job torn down",
    )
    kept = record(kubectl, namespace, "again-store-0")
    assert kept is not None, "a Retain disk's record outlives its Job"
    assert kept["status"]["phase"] == "Detached", kept["status"]
    assert "attachedTo" not in kept["status"], kept["status"]

    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=original_manifest)  # 64Mi again
        wait_ready(get_object, "dyd", "again")
        again = Store(namespace, "again", get_object)
        assert wait_for(again.checksum, timeout=60, what="the data back") == data
        (disk,) = again.provider.find_disks(again.disk_tags)
        assert disk.size_mib == 128, "the disk was shrunk or replaced"

        def truthful() -> dict[str, Any] | None:
            found = record(kubectl, namespace, "again-store-0")
            status = (found or {}).get("status") or {}
            good = status.get("phase") == "Attached" and status.get("capacity") == "128Mi"
            return found if good else None

        now = wait_for(truthful, timeout=60, what="the record says Attached, 128Mi")
        assert now["spec"]["size"] == "128Mi", "the record's size went down"
        assert now["status"]["diskId"] == disk.id
        said = [
            e
            for e in events(kubectl, namespace, "DiskLargerThanAsked")
            if e["involvedObject"]["name"] == "again-store"
        ]
        assert said and "more than the 64 MiB asked" in said[0]["message"], said
        assert not events(kubectl, namespace, "ReconcileError")
    finally:
        kubectl("delete", "dyd", "again", "-n", namespace, "--timeout=120s", check=False)
        wait_for(
            lambda: not kubectl("get", "dyj", "-n", namespace, "-o", "name").stdout.strip(),
            timeout=120,
            what="the Job torn down",
        )
        for disk in store.provider.find_disks(store.disk_tags):  # Retain: the test's to remove
            store.provider.delete_disk(disk.id)
        kubectl("delete", "dypd", "again-store-0", "-n", namespace, check=False)


def test_a_vanished_disk_stalls_its_instance_until_the_loss_is_accepted(
    kubectl: Kubectl, namespace: str, get_object: GetObject, docker_client: Any
) -> None:
    """The disk is deleted out of band while its VM is gone: the instance is not started on a
    blank disk (no CreatedDisk, db not started); the Job is Stalled, DiskMissing, naming it;
    once the user accepts the loss, a blank disk is made and the Job converges."""
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("lost", STORE))
    wait_ready(get_object, "dyd", "lost")
    store = Store(namespace, "lost", get_object)
    wait_for(store.checksum, timeout=30, what="data written")
    (disk,) = store.provider.find_disks(store.disk_tags)
    created_before = len(events(kubectl, namespace, "CreatedDisk"))
    vm_id = get_object("dyj", "lost-store")["status"]["instances"][0]["vmId"]
    docker_client.containers.get(vm_id).remove(force=True)  # the VM dies...
    store.provider.detach_disk(vm_id, disk.id)
    store.provider.delete_disk(disk.id)  # ...and its disk is deleted behind our back

    def stalled() -> dict[str, Any] | None:
        job = get_object("dyj", "lost-store")
        conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions", [])}
        stall = conditions.get("Stalled", {})
        return stall if stall.get("status") == "True" and stall["reason"] == "DiskMissing" else None

    stall = wait_for(stalled, timeout=120, what="the Job Stalled, DiskMissing")
    assert disk.id in stall["message"] and "instance 0" in stall["message"], stall
    # Events are posted after the status by kopf's poster: wait for it, a little.
    wait_for(lambda: events(kubectl, namespace, "DiskMissing"), timeout=30, what="DiskMissing")
    assert len(events(kubectl, namespace, "CreatedDisk")) == created_before, "a blank disk"
    assert not store.provider.find_disks(store.disk_tags)
    instance = get_object("dyj", "lost-store")["status"]["instances"][0]
    db = next(c for c in instance["containers"] if c["name"] == "db")
    assert db["state"] == "missing", db  # not started without its data

    kubectl("annotate", "dyj", "lost-store", "-n", namespace, "dockyard.dev/accept-disk-loss=0")
    wait_ready(get_object, "dyd", "lost")
    (blank,) = store.provider.find_disks(store.disk_tags)
    assert blank.id != disk.id
    assert len(events(kubectl, namespace, "CreatedDisk")) == created_before + 1
    wait_for(  # accepted once: should the new disk vanish too, it is missing again
        lambda: (
            "dockyard.dev/accept-disk-loss"
            not in get_object("dyj", "lost-store")["metadata"].get("annotations", {})
        ),
        timeout=30,
        what="the accepted loss consumed",
    )


TWO = """
- name: store
  instances: 2
  persistentDisk: {size: 64Mi, orphanRetention: 20s}
  containers:
  - name: db
    image: "dockyard/busybox:1"
    command: [sh, -c, "test -f /data/blob || head -c 1000000 /dev/urandom > /data/blob; sleep 100000"]
    volumes: [{subPath: db, mountPath: /data}]
"""


def blob_of(provider: Any, uid: str, index: int) -> str:
    (vm,) = provider.find_vms({"owner-uid": uid, "index": str(index)})
    (db,) = provider.docker_client(vm.id).containers.list(
        filters={"label": "dockyard.dev/container=db"}
    )
    code, out = db.exec_run(["sh", "-c", "test -s /data/blob && cat /data/blob"])
    assert code == 0
    return hashlib.sha256(out).hexdigest()


def scale(kubectl: Kubectl, namespace: str, count: int) -> None:
    patch = [{"op": "replace", "path": "/spec/jobs/0/instances", "value": count}]
    kubectl("patch", "dyd", "orphans", "-n", namespace, "--type=json", "-p", json.dumps(patch))


def test_a_scaled_away_disk_is_orphaned_adopted_back_and_reaped_after_its_retention(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tmp_path: Path, crds: None
) -> None:
    from dockyard.providers import ProviderConfig, make_provider

    provider = make_provider(ProviderConfig(type="local"))
    with own_operator_namespace(kubectl, kubeconfig, namespace_prefix, "d", tmp_path) as (
        own,
        namespace,
        get_object,
    ):
        own.start()
        kubectl("apply", "-n", namespace, "-f", "-", input=deployment("orphans", TWO))
        wait_ready(get_object, "dyd", "orphans")
        uid = get_object("dyj", "orphans-store")["metadata"]["uid"]
        data = wait_for(lambda: blob_of(provider, uid, 1), timeout=30, what="data on instance 1")
        tags = {"disk": f"{namespace}.orphans-store-1"}
        (disk,) = provider.find_disks(tags)

        scale(kubectl, namespace, 1)

        def orphaned() -> dict[str, Any] | None:
            found = record(kubectl, namespace, "orphans-store-1")
            return found if ((found or {}).get("status") or {}).get("phase") == "Orphaned" else None

        kept = wait_for(orphaned, timeout=120, what="the disk record Orphaned")
        assert kept["metadata"]["labels"]["dockyard.dev/orphaned"] == "true"
        assert not kept["metadata"].get("ownerReferences"), "an orphan outlives its Job"
        assert kept["status"]["expiresAt"] > kept["status"]["orphanedAt"]
        (still,) = provider.find_disks(tags)
        assert still.id == disk.id and "orphaned-at" in still.tags and not still.attached_to
        own.kill()  # an operator restart in between changes nothing
        own.start()
        wait_ready(get_object, "dyd", "orphans")
        assert record(kubectl, namespace, "orphans-store-1")["status"]["phase"] == "Orphaned"

        scale(kubectl, namespace, 2)  # back within the retention: the same disk, its data
        wait_ready(get_object, "dyd", "orphans")
        (back,) = provider.find_disks(tags)
        assert back.id == disk.id and "orphaned-at" not in back.tags
        assert wait_for(lambda: blob_of(provider, uid, 1), timeout=30, what="data") == data

        def adopted() -> dict[str, Any] | None:
            found = record(kubectl, namespace, "orphans-store-1") or {}
            attached = (found.get("status") or {}).get("phase") == "Attached"
            unmarked = "dockyard.dev/orphaned" not in found.get("metadata", {}).get("labels", {})
            return (
                found
                if attached and unmarked and found["metadata"].get("ownerReferences")
                else None
            )

        wait_for(adopted, timeout=60, what="the record Attached and owned again")

        scale(kubectl, namespace, 1)  # and this time past the retention: reaped
        wait_for(orphaned, timeout=120, what="the disk record Orphaned again")
        wait_for(
            lambda: (
                not provider.find_disks(tags)
                and record(kubectl, namespace, "orphans-store-1") is None
            ),
            timeout=90,
            what="the orphan reaped after its 20 s",
        )
        assert events(kubectl, namespace, "DeletedOrphanedDisk")
    provider.close()


SNAPSHOT = """
apiVersion: dockyard.dev/v1alpha1
kind: DiskSnapshot
metadata: {{name: {name}}}
spec: {{persistentDisk: {disk}}}
"""


def condition_of(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), {}
    )


def test_a_snapshot_restores_a_lost_disk_with_the_data_of_its_moment(
    kubectl: Kubectl, namespace: str, get_object: GetObject, docker_client: Any
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("snap", STORE))
    wait_ready(get_object, "dyd", "snap")
    store = Store(namespace, "snap", get_object)
    original = wait_for(store.checksum, timeout=30, what="data written")
    apply = ["apply", "-n", namespace, "-f", "-"]
    kubectl(*apply, input=SNAPSHOT.format(name="before", disk="snap-store-0"))
    kubectl(*apply, input=SNAPSHOT.format(name="nothing", disk="no-such-disk"))
    try:
        taken = wait_for(
            lambda: (s := get_object("dysnap", "before")).get("status", {}).get("readyToUse") and s,
            timeout=120,
            what="the snapshot ready to use",
        )
        assert taken["status"]["restoreSize"] == "64Mi", taken["status"]
        assert condition_of(taken, "Ready")["status"] == "True"
        (snapshot,) = store.provider.find_snapshots({"snapshot": f"{namespace}.before"})

        def failed() -> dict[str, Any] | None:
            stalled = condition_of(get_object("dysnap", "nothing"), "Stalled")
            return stalled if stalled.get("status") == "True" else None

        stall = wait_for(failed, timeout=60, what="a snapshot of nothing Stalled")
        assert "spec.persistentDisk" in stall["message"] and "no-such-disk" in stall["message"]

        # The data changes after the snapshot, then the disk is lost.
        (vm,) = store.provider.find_vms({"owner-uid": store.uid})
        (db,) = store.provider.docker_client(vm.id).containers.list(
            filters={"label": "dockyard.dev/container=db"}
        )
        assert db.exec_run(["sh", "-c", "echo changed > /data/blob"])[0] == 0
        assert store.checksum() != original
        (disk,) = store.provider.find_disks(store.disk_tags)
        docker_client.containers.get(vm.id).remove(force=True)
        store.provider.detach_disk(vm.id, disk.id)
        store.provider.delete_disk(disk.id)

        # Restoring into a disk smaller than the snapshot is refused, naming the field.
        small = STORE.replace("size: 64Mi", "size: 32Mi").replace("name: store", "name: small")
        small = small.replace("orphanRetention: 0s", "orphanRetention: 0s, restoreFrom: before")
        kubectl(*apply, input=deployment("tiny", small))

        def too_small() -> dict[str, Any] | None:
            stalled = condition_of(get_object("dyj", "tiny-small"), "Stalled")
            return stalled if stalled.get("status") == "True" else None

        refused = wait_for(too_small, timeout=120, what="restore into a smaller disk refused")
        assert "spec.persistentDisk.size" in refused["message"], refused

        patch = [
            {"op": "add", "path": "/spec/jobs/0/persistentDisk/restoreFrom", "value": "before"}
        ]
        kubectl("patch", "dyd", "snap", "-n", namespace, "--type=json", "-p", json.dumps(patch))
        wait_ready(get_object, "dyd", "snap")
        assert wait_for(store.checksum, timeout=60, what="the data restored") == original
    finally:
        kubectl("delete", "dyd", "tiny", "-n", namespace, "--timeout=120s", check=False)
        kubectl("delete", "dysnap", "before", "nothing", "-n", namespace, "--timeout=120s")
    assert snapshot.id and not store.provider.find_snapshots({"snapshot": f"{namespace}.before"})


def test_snapshot_before_snapshots_each_rollout_that_stops_the_disks_users_and_keeps_the_newest(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    update = "update: {snapshotBefore: true, snapshotsKept: 1}\n"
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("auto", STORE, update))
    wait_ready(get_object, "dyd", "auto")
    store = Store(namespace, "auto", get_object)
    wait_for(store.checksum, timeout=30, what="data written")
    assert not store.provider.find_snapshots({"snapshot": f"{namespace}.auto-store-0-g1"})

    def roll_out(value: str) -> str:
        env = [{"name": "ROUND", "value": value}]
        patch = [{"op": "add", "path": "/spec/jobs/0/containers/0/env", "value": env}]
        before = get_object("dyj", "auto-store")["metadata"]["generation"]
        kubectl("patch", "dyd", "auto", "-n", namespace, "--type=json", "-p", json.dumps(patch))
        # The Job still shows Ready at its old generation until the Deployment's change reaches it.
        wait_for(
            lambda: get_object("dyj", "auto-store")["metadata"]["generation"] > before,
            timeout=30,
            what="the Deployment's change on its Job",
        )
        job = wait_ready(get_object, "dyj", "auto-store")
        name = f"auto-store-0-g{job['metadata']['generation']}"
        taken = wait_for(
            lambda: (s := get_object("dysnap", name)).get("status", {}).get("readyToUse") and s,
            timeout=120,
            what=f"the snapshot {name} ready to use",
        )
        assert taken["metadata"]["labels"]["dockyard.dev/snapshot-before"] == "true"
        assert taken["spec"]["persistentDisk"] == "auto-store-0"
        assert taken["status"]["restoreSize"] == "64Mi"
        return name

    try:
        first = roll_out("1")
        (provider_first,) = store.provider.find_snapshots({"snapshot": f"{namespace}.{first}"})
        second = roll_out("2")
        assert second != first
        wait_for(
            lambda: (
                kubectl("get", "dysnap", first, "-n", namespace, check=False).returncode != 0
                and not store.provider.find_snapshots({"snapshot": f"{namespace}.{first}"})
            ),
            timeout=120,
            what=f"{first} (beyond snapshotsKept=1) deleted with its provider snapshot",
        )
        assert store.provider.find_snapshots({"snapshot": f"{namespace}.{second}"})
        assert provider_first.id
        assert events(kubectl, namespace, "SnapshotTaken")
    finally:
        kubectl("delete", "dyd", "auto", "-n", namespace, "--timeout=120s", check=False)
        kubectl("delete", "dysnap", "-l", "dockyard.dev/job=auto-store", "-n", namespace)
    assert not store.provider.find_snapshots({"snapshot": f"{namespace}.{second}"})
