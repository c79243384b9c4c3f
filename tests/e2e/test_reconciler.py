"""The reconciler end to end: real apiserver, real Docker, local provider, the operator running."""

from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import REPO, Kubectl
from tests.e2e.conftest import GetObject
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "dockyard_cleanup")]

READY_DEADLINE = 180


def deployment(name: str, jobs: str, update: str = "") -> str:
    return (
        textwrap.dedent(
            f"""
        apiVersion: dockyard.dev/v1alpha1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          provider: {{type: local}}
        """
        )
        + textwrap.indent(textwrap.dedent(update), "  ")
        + "  jobs:\n"
        + textwrap.indent(textwrap.dedent(jobs), "  ")
    )


CHAIN = """
- name: chain
  instances: 1
  containers:
  - {name: db, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"], env: [{name: V, value: "1"}]}
  - {name: app, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"], dependsOn: [db]}
  - {name: worker, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"], dependsOn: [app]}
  - {name: loner, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"]}
"""


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return None


def wait_ready(get_object: GetObject, kind: str, name: str, timeout: float = READY_DEADLINE) -> Any:
    def ready() -> dict[str, Any] | None:
        obj = get_object(kind, name)
        c = condition(obj, "Ready")
        at_generation = obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        return obj if c and c["status"] == "True" and at_generation else None

    return wait_for(ready, timeout=timeout, what=f"{kind}/{name} Ready")


def containers(get_object: GetObject, job: str, index: int = 0) -> dict[str, dict[str, Any]]:
    status = get_object("dyj", job)["status"]
    instance = next(i for i in status["instances"] if i["index"] == index)
    return {c["name"]: c for c in instance["containers"]}


def started(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["startedAt"]).timestamp()


def test_upstream_change_restarts_dependents_in_order_and_leaves_others_alone(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("chain", CHAIN))
    wait_ready(get_object, "dyd", "chain")
    before = containers(get_object, "chain-chain")
    assert {c["state"] for c in before.values()} == {"running"}
    # started in dependency order
    assert started(before["db"]) <= started(before["app"]) <= started(before["worker"])

    patch = [{"op": "replace", "path": "/spec/jobs/0/containers/0/env/0/value", "value": "2"}]
    kubectl("patch", "dyd", "chain", "-n", namespace, "--type=json", "-p", json.dumps(patch))

    def restarted() -> dict[str, dict[str, Any]] | None:
        now = containers(get_object, "chain-chain")
        moved = all(started(now[n]) > started(before[n]) for n in ("db", "app", "worker"))
        return now if moved else None

    after = wait_for(restarted, timeout=READY_DEADLINE, what="db, app and worker restarted")
    assert after["db"]["specHash"] != before["db"]["specHash"]
    assert started(after["db"]) <= started(after["app"]) <= started(after["worker"])
    assert after["app"]["lastRestartReason"].startswith("upstream chain/db")
    assert after["loner"]["startedAt"] == before["loner"]["startedAt"], "unrelated container moved"
    wait_ready(get_object, "dyd", "chain")


def test_scale_up_and_down(kubectl: Kubectl, namespace: str, get_object: GetObject) -> None:
    jobs = """
    - name: web
      instances: 1
      containers:
      - {name: srv, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"]}
    """
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("scale", jobs))
    wait_ready(get_object, "dyd", "scale")
    for count in (3, 1):
        patch = [{"op": "replace", "path": "/spec/jobs/0/instances", "value": count}]
        kubectl("patch", "dyd", "scale", "-n", namespace, "--type=json", "-p", json.dumps(patch))
        wait_for(
            lambda count=count: (
                len(
                    [
                        i
                        for i in get_object("dyj", "scale-web")["status"]["instances"]
                        if "vmId" in i
                    ]
                )
                == count
                and condition(get_object("dyd", "scale"), "Ready")["status"] == "True"
            ),  # type: ignore[index]
            timeout=READY_DEADLINE,
            what=f"{count} instances ready",
        )
        status = get_object("dyd", "scale")["status"]
        assert status["readyInstances"] == count


def test_failing_canary_halts_rollout_and_keeps_the_rest_on_the_old_version(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    jobs = """
    - name: web
      instances: 3
      containers:
      - {name: srv, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"]}
    """
    update = """
    update: {canaries: 1, maxInFlight: 2, canaryWatchTime: "1s-4s", updateWatchTime: "1s-4s"}
    """
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("canary", jobs, update))
    wait_ready(get_object, "dyd", "canary")
    old_hashes = {
        i["index"]: i["containers"][0]["specHash"]
        for i in get_object("dyj", "canary-web")["status"]["instances"]
    }
    bad = [
        {
            "op": "replace",
            "path": "/spec/jobs/0/containers/0/command",
            "value": ["sh", "-c", "exit 3"],
        }
    ]
    kubectl("patch", "dyd", "canary", "-n", namespace, "--type=json", "-p", json.dumps(bad))

    def stalled() -> dict[str, Any] | None:
        obj = get_object("dyd", "canary")
        c = condition(obj, "Stalled")
        return obj if c and c["status"] == "True" else None

    obj = wait_for(stalled, timeout=READY_DEADLINE, what="Deployment Stalled")
    assert condition(obj, "Ready")["status"] == "False"  # type: ignore[index]
    assert "canary" in condition(obj, "Stalled")["message"]  # type: ignore[index]
    instances = get_object("dyj", "canary-web")["status"]["instances"]
    changed = [
        i["index"] for i in instances if i["containers"][0]["specHash"] != old_hashes[i["index"]]
    ]
    assert changed == [0], f"only the canary may carry the new version, got {changed}"
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "RolloutHalted" in events


def test_container_removed_by_hand_comes_back(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    from dockyard.providers import ProviderConfig, make_provider
    from dockyard.providers.base import TAG_OWNER_UID

    jobs = """
    - name: web
      instances: 1
      containers:
      - {name: srv, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"]}
    """
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("drift", jobs))
    wait_ready(get_object, "dyd", "drift")
    job = get_object("dyj", "drift-web")
    provider = make_provider(ProviderConfig(type="local"))
    (vm,) = provider.find_vms({TAG_OWNER_UID: job["metadata"]["uid"]})
    engine = provider.docker_client(vm.id)
    (victim,) = engine.containers.list(filters={"label": "dockyard.dev/container=srv"})
    victim.remove(force=True)

    def back() -> bool:
        found = engine.containers.list(filters={"label": "dockyard.dev/container=srv"})
        return bool(found) and found[0].id != victim.id and found[0].status == "running"

    wait_for(back, timeout=60, what="srv recreated")


# One instance whose db writes 4 MB of random data to its persistent disk, once.
STORE = """
- name: store
  instances: 1
  persistentDisk: {size: 64Mi, reclaimPolicy: Delete, orphanRetention: 0s}
  containers:
  - name: db
    image: "dockyard/busybox:1"
    command: [sh, -c, "test -f /data/blob || head -c 4000000 /dev/urandom > /data/blob; sleep 100000"]
    volumes: [{subPath: db, mountPath: /data}]
"""


class Store:
    """A deployment of STORE seen through the local provider: its disk and db's data."""

    def __init__(self, namespace: str, deployment_name: str, get_object: GetObject) -> None:
        from dockyard.providers import ProviderConfig, make_provider

        self.provider = make_provider(ProviderConfig(type="local"))
        self.uid = get_object("dyj", f"{deployment_name}-store")["metadata"]["uid"]
        self.disk_tags = {"disk": f"{namespace}.{deployment_name}-store-0"}

    def checksum(self) -> str:
        from dockyard.providers.base import TAG_OWNER_UID

        (vm,) = self.provider.find_vms({TAG_OWNER_UID: self.uid})
        (db,) = self.provider.docker_client(vm.id).containers.list(
            filters={"label": "dockyard.dev/container=db"}
        )
        code, out = db.exec_run(["sh", "-c", "test -s /data/blob && cat /data/blob"])
        assert code == 0
        return hashlib.sha256(out).hexdigest()

    def grow(self, kubectl: Kubectl, namespace: str, deployment_name: str) -> None:
        patch = [{"op": "replace", "path": "/spec/jobs/0/persistentDisk/size", "value": "128Mi"}]
        kubectl(
            "patch", "dyd", deployment_name, "-n", namespace, "--type=json", "-p", json.dumps(patch)
        )

    def delete_and_wait_gone(self, kubectl: Kubectl, namespace: str, deployment_name: str) -> None:
        from dockyard.providers.base import TAG_OWNER_UID

        kubectl("delete", "dyd", deployment_name, "-n", namespace, "--timeout=120s")
        wait_for(
            lambda: (
                not self.provider.find_vms({TAG_OWNER_UID: self.uid})
                and not self.provider.find_disks(self.disk_tags)
            ),
            timeout=120,
            what="VMs and disks gone",
        )


def deploy_store(
    kubectl: Kubectl,
    namespace: str,
    get_object: GetObject,
    name: str,
    more_containers: str = "",
    in_place_resize: bool = True,
    orphan_retention: str = "0s",
) -> tuple[Store, str]:
    """Apply a Deployment of STORE (plus ``more_containers``) and wait until it is Ready and
    db's data is written; the Store and the data's checksum."""
    store_job = STORE.replace("orphanRetention: 0s", f"orphanRetention: {orphan_retention}")
    manifest = deployment(name, store_job.rstrip("\n") + more_containers)
    if not in_place_resize:  # the local provider then plays an IaaS that cannot grow disks
        options = 'options: {in_place_resize: "false"}'
        manifest = manifest.replace(
            "provider: {type: local}", f"provider: {{type: local, {options}}}"
        )
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    wait_ready(get_object, "dyd", name)
    store = Store(namespace, name, get_object)
    return store, wait_for(store.checksum, timeout=30, what="data written")


def test_disk_grow_keeps_data_and_delete_leaves_nothing(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    store, original = deploy_store(kubectl, namespace, get_object, "disk")
    disk_before = store.provider.find_disks(store.disk_tags)
    assert disk_before and disk_before[0].size_mib == 64

    store.grow(kubectl, namespace, "disk")
    wait_for(
        lambda: store.provider.find_disks(store.disk_tags)[0].size_mib >= 128,
        timeout=READY_DEADLINE,
        what="disk grown",
    )
    wait_ready(get_object, "dyd", "disk")
    assert wait_for(store.checksum, timeout=60, what="data readable again") == original

    def recorded() -> dict[str, Any] | None:
        found = kubectl("get", "dypd", "disk-store-0", "-n", namespace, "-o", "json", check=False)
        if found.returncode:
            return None
        record: dict[str, Any] = json.loads(found.stdout)
        status = record.get("status") or {}
        return record if status.get("capacity") == "128Mi" else None

    record = wait_for(recorded, timeout=60, what="PersistentDisk record shows 128Mi")
    (disk_after,) = store.provider.find_disks(store.disk_tags)
    assert record["status"]["diskId"] == disk_after.id == disk_before[0].id
    assert record["status"]["phase"] == "Attached"
    assert record["metadata"]["labels"]["dockyard.dev/job"] == "disk-store"
    ready = next(c for c in record["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Attached"), ready
    store.delete_and_wait_gone(kubectl, namespace, "disk")


def test_disk_the_provider_cannot_grow_is_copied_to_a_bigger_one_with_its_data(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    from dockyard.providers import DiskSpec

    app = """
  - {name: app, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"], dependsOn: [db]}
"""
    store, original = deploy_store(
        kubectl, namespace, get_object, "copy", app, in_place_resize=False
    )
    (old,) = store.provider.find_disks(store.disk_tags)

    # What a crash right after creating the new disk leaves: the old disk stays the instance's,
    # and the new one, not wanted at this size, goes.
    stale = store.provider.create_disk(
        DiskSpec({**store.disk_tags, "replaces": old.id}, size_mib=96)
    )
    wait_for(
        lambda: [d.id for d in store.provider.find_disks(store.disk_tags)] == [old.id],
        timeout=60,
        what="the unfinished copy deleted",
    )
    assert store.checksum() == original
    before = containers(get_object, "copy-store")

    store.grow(kubectl, namespace, "copy")

    def migrated() -> Any:
        found = store.provider.find_disks(store.disk_tags)
        return found[0] if len(found) == 1 and found[0].id != old.id else None

    new = wait_for(migrated, timeout=READY_DEADLINE, what="the disk replaced by a copy")
    assert new.size_mib == 128
    assert new.tags.get("replaces") == old.id
    wait_ready(get_object, "dyd", "copy")
    assert wait_for(store.checksum, timeout=60, what="data readable on the new disk") == original
    after = containers(get_object, "copy-store")
    assert started(after["db"]) > started(before["db"])
    assert started(after["app"]) > started(after["db"]), "app not restarted after its upstream"

    reasons = [
        (e["reason"], e["message"])
        for e in json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    ]
    assert any(r == "DiskMigrationStarted" and "in_place_resize" in m for r, m in reasons)
    assert any(r == "MigratedDisk" and old.id in m and new.id in m for r, m in reasons), reasons
    assert not [r for r, _ in reasons if r.endswith("Failed")]
    assert any(r == "DeletedDisk" and stale.id in m for r, m in reasons), reasons

    def recorded() -> dict[str, Any] | None:
        record: dict[str, Any] = get_object("dypd", "copy-store-0")
        status = record.get("status") or {}
        return record if status.get("diskId") == new.id else None

    record = wait_for(recorded, timeout=60, what="PersistentDisk record names the new disk")
    assert record["status"]["capacity"] == "128Mi"
    store.delete_and_wait_gone(kubectl, namespace, "copy")


def test_a_migrated_disks_old_one_is_orphaned_for_its_retention_then_deleted(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    from dockyard.handlers.disks import replaced_name

    store, original = deploy_store(
        kubectl, namespace, get_object, "keep", in_place_resize=False, orphan_retention="20s"
    )
    (old,) = store.provider.find_disks(store.disk_tags)
    store.grow(kubectl, namespace, "keep")

    def migrated() -> Any:
        found = {d.id: d for d in store.provider.find_disks(store.disk_tags)}
        return found if len(found) == 2 and found[old.id].tags.get("superseded-by") else None

    disks = wait_for(migrated, timeout=READY_DEADLINE, what="the old disk kept, superseded")
    (new,) = [d for d in disks.values() if d.id != old.id]
    assert disks[old.id].tags["superseded-by"] == new.id and new.size_mib == 128
    assert disks[old.id].attached_to is None, "the old disk is still attached"
    wait_ready(get_object, "dyd", "keep")
    assert wait_for(store.checksum, timeout=60, what="data readable on the new disk") == original

    record_name = replaced_name("keep-store-0", old.id)

    def orphan_record() -> dict[str, Any] | None:
        found = kubectl("get", "dypd", record_name, "-n", namespace, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    record = wait_for(orphan_record, timeout=60, what=f"the record {record_name}")
    assert record["status"]["phase"] == "Orphaned" and record["status"]["diskId"] == old.id
    assert record["status"]["expiresAt"] and record["spec"]["size"] == "64Mi"

    # Retention 20 s: the Job deletes the old disk then (it wakes itself), and its record.
    wait_for(
        lambda: [d.id for d in store.provider.find_disks(store.disk_tags)] == [new.id],
        timeout=90,
        what="the old disk deleted after its retention",
    )
    wait_for(lambda: orphan_record() is None, timeout=60, what="its record deleted")
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(e["reason"] == "DeletedDisk" and old.id in e["message"] for e in events)
    assert wait_for(store.checksum, timeout=30, what="data still there") == original
    store.delete_and_wait_gone(kubectl, namespace, "keep")


def test_a_persistent_disk_made_by_hand_is_created_healthy_grown_and_deleted(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    from dockyard.providers import ProviderConfig, make_provider
    from tests.observability.test_argocd_health import health

    manifest = """
apiVersion: dockyard.dev/v1alpha1
kind: PersistentDisk
metadata: {name: scratch}
spec: {size: 32Mi, provider: {type: local}, reclaimPolicy: Delete}
"""
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    record = wait_ready(get_object, "dypd", "scratch")
    provider = make_provider(ProviderConfig(type="local"))
    (disk,) = provider.find_disks({"disk": f"{namespace}.scratch"})
    assert record["status"]["diskId"] == disk.id and disk.size_mib == 32
    assert record["status"]["phase"] == "Detached"
    assert health(record, "lua5.4") == ("Healthy", f"32Mi disk {disk.id}")

    patch = [{"op": "replace", "path": "/spec/size", "value": "64Mi"}]
    kubectl("patch", "dypd", "scratch", "-n", namespace, "--type=json", "-p", json.dumps(patch))
    grown = wait_for(
        lambda: (lambda r: r if r["status"].get("capacity") == "64Mi" else None)(
            wait_ready(get_object, "dypd", "scratch")
        ),
        timeout=60,
        what="the disk grown to 64Mi",
    )
    assert provider.find_disks({"disk": f"{namespace}.scratch"})[0].size_mib == 64
    assert grown["status"]["diskId"] == disk.id  # grown, not replaced

    # A provider that cannot grow it in place: no VM to copy on, so it says so and keeps it.
    stuck = manifest.replace("name: scratch", "name: stuck").replace(
        "provider: {type: local}", 'provider: {type: local, options: {in_place_resize: "false"}}'
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=stuck)
    wait_ready(get_object, "dypd", "stuck")
    kubectl("patch", "dypd", "stuck", "-n", namespace, "--type=json", "-p", json.dumps(patch))

    def failed() -> dict[str, Any] | None:
        found = get_object("dypd", "stuck")
        return found if found["status"].get("phase") == "Failed" else None

    refused = wait_for(failed, timeout=60, what="the stuck disk Failed")
    stalled = next(c for c in refused["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "in_place_resize" in stalled["message"], stalled
    assert health(refused, "lua5.4")[0] == "Degraded"
    assert refused["status"]["capacity"] == "32Mi"

    for name in ("scratch", "stuck"):
        kubectl("delete", "dypd", name, "-n", namespace, "--timeout=60s")
        assert provider.find_disks({"disk": f"{namespace}.{name}"}) == []


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_examples_become_ready(
    kubectl: Kubectl, namespace: str, get_object: GetObject, example: str
) -> None:
    path = REPO / "examples" / example
    kubectl("apply", "-n", namespace, "-f", str(path))
    names = kubectl("get", "dyd", "-n", namespace, "-o", "name").stdout.split()
    for name in names:
        wait_ready(get_object, "dyd", name.split("/")[-1])


CROSS_JOB = """
- name: backend
  instances: 1
  containers:
  - {name: db, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"], env: [{name: V, value: "1"}]}
- name: frontend
  instances: 2
  containers:
  - {name: web, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"], dependsOn: [backend/db]}
  - {name: side, image: "dockyard/busybox:1", command: [sh, -c, "sleep 100000"]}
"""


def test_cross_job_dependents_restart_after_their_upstream_serially(
    kubectl: Kubectl, namespace: str, get_object: GetObject
) -> None:
    """A change to backend/db recreates it; frontend's web, on every instance, restarts after
    it (serial update: frontend's Job is only touched once backend is Ready again)."""
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("cross", CROSS_JOB))
    wait_ready(get_object, "dyd", "cross")
    db_before = containers(get_object, "cross-backend")["db"]
    web_before = [containers(get_object, "cross-frontend", i) for i in (0, 1)]
    assert all(started(w["web"]) >= started(db_before) for w in web_before)

    patch = [{"op": "replace", "path": "/spec/jobs/0/containers/0/env/0/value", "value": "2"}]
    kubectl("patch", "dyd", "cross", "-n", namespace, "--type=json", "-p", json.dumps(patch))

    def restarted() -> list[dict[str, dict[str, Any]]] | None:
        now = [containers(get_object, "cross-frontend", i) for i in (0, 1)]
        moved = all(
            started(n["web"]) > started(b["web"]) for n, b in zip(now, web_before, strict=True)
        )
        return now if moved else None

    web_after = wait_for(restarted, timeout=READY_DEADLINE, what="web restarted on both")
    wait_ready(get_object, "dyd", "cross")
    db_after = containers(get_object, "cross-backend")["db"]
    assert db_after["specHash"] != db_before["specHash"]
    for now, before in zip(web_after, web_before, strict=True):
        assert started(now["web"]) >= started(db_after), "web restarted before its upstream"
        assert now["web"]["lastRestartReason"].startswith("upstream backend/db")
        assert now["side"]["startedAt"] == before["side"]["startedAt"], "unrelated moved"
