"""The health monitor and resurrector end to end: real apiserver, real Docker, local provider,
the real operator. Containers are killed by SIGKILL of their process inside the VM (a `docker
kill` would count as a manual stop), VMs by SIGKILL or removal of their container on the host."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import GetObject, own_operator_namespace
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]
uses_operator = pytest.mark.usefixtures("operator", "dockyard_cleanup")

IMAGE = "dockyard/busybox:1"
READY_DEADLINE = 180
REPAIR_DEADLINE = 120
# Workloads that stop on SIGTERM, as real ones do (a shell as PID 1 ignores it otherwise, and every
# restart would wait out the grace period).
RUN = "trap 'exit 0' TERM; sleep 100000 & wait"
SLEEP = ["sh", "-c", RUN]
LABEL_OWNER = "dockyard.dev/owner-uid"
LABEL_INDEX = "dockyard.dev/index"
LABEL_CONTAINER = "dockyard.dev/container"
# The db writes 4 MB of random data once; the checksum proves it survives VM replacement.
WRITER = {
    "name": "db",
    "image": IMAGE,
    "command": [
        "sh",
        "-c",
        "test -f /data/blob || head -c 4000000 /dev/urandom > /data/blob; " + RUN,
    ],
    "volumes": [{"subPath": "db", "mountPath": "/data"}],
}
DISK = {"size": "64Mi", "reclaimPolicy": "Delete"}


# --- helpers ------------------------------------------------------------------------------------


def manifest(name: str, job: dict[str, Any], resurrection: dict[str, Any] | None = None) -> str:
    spec: dict[str, Any] = {"provider": {"type": "local"}, "jobs": [job]}
    if resurrection is not None:
        spec["resurrection"] = resurrection
    body = {
        "apiVersion": "dockyard.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": spec,
    }
    return json.dumps(body)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return None


def wait_ready(get_object: GetObject, kind: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = get_object(kind, name)
        c = condition(obj, "Ready")
        at_generation = obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        return obj if c and c["status"] == "True" and at_generation else None

    result: dict[str, Any] = wait_for(ready, timeout=READY_DEADLINE, what=f"{kind}/{name} Ready")
    return result


def containers(job: dict[str, Any], index: int = 0) -> dict[str, dict[str, Any]]:
    instance = next(i for i in job["status"]["instances"] if i["index"] == index)
    return {c["name"]: c for c in instance["containers"]}


def started(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["startedAt"]).timestamp()


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e.get("reason") == reason]


def stays_true(probe: Callable[[], object], seconds: float, what: str) -> None:
    """``probe`` holds at every check for ``seconds`` (a deadline, polled; never a bare sleep)."""
    deadline = time.monotonic() + seconds
    checks = 0
    while time.monotonic() < deadline or checks < 2:
        assert probe(), f"{what} stopped holding after {checks} checks"
        checks += 1
        time.sleep(0.5)


def vm_containers(docker_client: Any, uid: str) -> list[Any]:
    """Every VM container of a Job on the host, whatever its state."""
    found: list[Any] = docker_client.containers.list(
        all=True, filters={"label": [f"{LABEL_OWNER}={uid}"]}
    )
    return found


def kill_process(docker_client: Any, local: Any, vm_id: str, name: str) -> str:
    """SIGKILL a container's main process from inside its VM; returns the container id."""
    engine = local.docker_client(vm_id)
    try:
        (victim,) = engine.containers.list(filters={"label": f"{LABEL_CONTAINER}={name}"})
        pid = victim.attrs["State"]["Pid"]
        assert pid > 0, victim.attrs["State"]
        code, output = docker_client.containers.get(vm_id).exec_run(["kill", "-9", str(pid)])
        assert code == 0, output
        return str(victim.id)
    finally:
        engine.close()


def checksum(local: Any, uid: str) -> str:
    (vm,) = local.find_vms({"owner-uid": uid})
    engine = local.docker_client(vm.id)
    try:
        (db,) = engine.containers.list(filters={"label": f"{LABEL_CONTAINER}=db"})
        code, out = db.exec_run(["sh", "-c", "test -s /data/blob && cat /data/blob"])
    finally:
        engine.close()
    assert code == 0, out
    return hashlib.sha256(out).hexdigest()


def running_on(local: Any, vm_id: str, names: set[str]) -> bool:
    engine = local.docker_client(vm_id)
    try:
        found = engine.containers.list(filters={"label": LABEL_CONTAINER})
    finally:
        engine.close()
    return {c.labels[LABEL_CONTAINER] for c in found if c.status == "running"} == names


@pytest.fixture(scope="module")
def local() -> Iterator[Any]:
    from dockyard.providers import ProviderConfig, make_provider

    provider = make_provider(ProviderConfig(type="local"))
    yield provider
    provider.close()


# --- container repair ---------------------------------------------------------------------------


@uses_operator
def test_killed_upstream_comes_back_and_its_dependents_restart_after_it_in_order(
    kubectl: Kubectl, namespace: str, get_object: GetObject, docker_client: Any, local: Any
) -> None:
    job = {
        "name": "chain",
        "instances": 1,
        "containers": [
            {"name": "db", "image": IMAGE, "command": SLEEP},
            {"name": "app", "image": IMAGE, "command": SLEEP, "dependsOn": ["db"]},
            {"name": "worker", "image": IMAGE, "command": SLEEP, "dependsOn": ["app"]},
            {"name": "loner", "image": IMAGE, "command": SLEEP},
        ],
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("repair", job))
    wait_ready(get_object, "dyd", "repair")
    body = get_object("dyj", "repair-chain")
    before = containers(body)
    (vm,) = local.find_vms({"owner-uid": body["metadata"]["uid"]})

    killed_id = kill_process(docker_client, local, vm.id, "db")
    killed_at = time.time()

    def repaired() -> dict[str, dict[str, Any]] | None:
        now = containers(get_object("dyj", "repair-chain"))
        moved = all(
            "startedAt" in now[n] and started(now[n]) > started(before[n])
            for n in ("db", "app", "worker")
        )
        up = all(c["state"] == "running" and c["ready"] for c in now.values())
        return now if moved and up else None

    after = wait_for(repaired, timeout=REPAIR_DEADLINE, what="db, app and worker restarted")
    # the engine brought db back: the same container, restarted by its restart policy
    engine = local.docker_client(vm.id)
    try:
        (db,) = engine.containers.list(filters={"label": f"{LABEL_CONTAINER}=db"})
    finally:
        engine.close()
    assert db.id == killed_id, "db was recreated instead of restarted"
    assert db.status == "running"
    # ...and its dependents after it, in dependency order (startedAt has millisecond precision)
    assert started(after["db"]) <= started(after["app"]) <= started(after["worker"]), after
    assert started(after["db"]) >= killed_at - 1.0
    assert "db" in after["app"]["lastRestartReason"], after["app"]
    assert "app" in after["worker"]["lastRestartReason"], after["worker"]
    for name in ("db", "app", "worker"):
        assert after[name]["restartCount"] >= before[name]["restartCount"] + 1, (name, after)
    assert after["loner"]["startedAt"] == before["loner"]["startedAt"], "unrelated container moved"
    assert after["loner"]["restartCount"] == before["loner"]["restartCount"]
    db_up, worker_up = started(after["db"]) - killed_at, started(after["worker"]) - killed_at
    print(f"repair: db up {db_up:.3f}s, worker up {worker_up:.3f}s after the kill")


# --- VM resurrection ----------------------------------------------------------------------------


def disk_job(name: str, instances: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "instances": instances,
        "persistentDisk": DISK,
        "containers": [
            WRITER,
            {"name": "app", "image": IMAGE, "command": SLEEP, "dependsOn": ["db"]},
        ],
    }


@uses_operator
@pytest.mark.parametrize("how", ["kill", "remove"])
def test_dead_vm_is_resurrected_with_its_disk_and_data(
    kubectl: Kubectl,
    namespace: str,
    get_object: GetObject,
    docker_client: Any,
    local: Any,
    how: str,
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("res", disk_job("store")))
    wait_ready(get_object, "dyd", "res")
    uid = get_object("dyj", "res-store")["metadata"]["uid"]
    original = wait_for(lambda: checksum(local, uid), timeout=60, what="data written")
    (old,) = local.find_vms({"owner-uid": uid})
    (disk,) = local.find_disks({"disk": f"{namespace}.res-store-0"})
    assert disk.attached_to == old.id

    victim = docker_client.containers.get(old.id)
    if how == "kill":
        victim.kill()  # SIGKILL: the VM container stays, exited
    else:
        victim.remove(force=True)  # the VM vanished
    killed_at = time.monotonic()

    def replaced() -> Any:
        vms = local.find_vms({"owner-uid": uid})
        if len(vms) != 1 or vms[0].id == old.id or vms[0].state.value != "running":
            return None
        return vms[0] if running_on(local, vms[0].id, {"db", "app"}) else None

    new = wait_for(replaced, timeout=REPAIR_DEADLINE, what="a replacement VM running db and app")
    took = time.monotonic() - killed_at
    assert checksum(local, uid) == original, "the disk's data changed"
    (disk_after,) = local.find_disks({"disk": f"{namespace}.res-store-0"})
    assert (disk_after.id, disk_after.attached_to) == (disk.id, new.id)
    assert [c.name for c in vm_containers(docker_client, uid)] == [new.id], "old VM left behind"
    volumes = {v.name for v in docker_client.volumes.list(filters={"name": old.id})}
    assert f"{old.id}-docker" not in volumes, "the dead VM's engine volume was left behind"

    wait_ready(get_object, "dyd", "res")
    status = get_object("dyj", "res-store")["status"]
    (instance,) = status["instances"]
    assert instance["vmId"] == new.id
    assert {c["name"]: c["state"] for c in instance["containers"]} == {
        "db": "running",
        "app": "running",
    }
    record = wait_for(
        lambda: (
            (r := get_object("dypd", "res-store-0"))["status"].get("attachedTo") == new.id and r
        ),
        timeout=60,
        what="the PersistentDisk record on the new VM",
    )
    assert record["status"]["diskId"] == disk.id

    def recorded() -> list[dict[str, Any]]:
        return [e for e in events(kubectl, namespace, "ResurrectedVM") if old.id in e["message"]]

    (event,) = wait_for(recorded, timeout=60, what="a ResurrectedVM Event naming the old VM")
    assert event["involvedObject"]["name"] == "res-store"
    assert event["type"] == "Normal"
    print(f"resurrection ({how}): replacement VM running db and app after {took:.1f}s")


# --- meltdown -----------------------------------------------------------------------------------


@contextmanager
def paused(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """The operator frozen for a moment, so deaths made meanwhile reach it together."""
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


def test_meltdown_guard_stops_resurrection_when_too_many_die_at_once(
    kubectl: Kubectl,
    namespace: str,
    get_object: GetObject,
    docker_client: Any,
    local: Any,
    operator: subprocess.Popen[bytes],
    dockyard_cleanup: None,
) -> None:
    job = {
        "name": "web",
        "instances": 4,
        "containers": [{"name": "srv", "image": IMAGE, "command": SLEEP}],
    }
    policy = {"meltdownMinDown": 2, "meltdownPercent": 50}
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("melt", job, policy))
    wait_ready(get_object, "dyd", "melt")
    body = get_object("dyj", "melt-web")
    uid = body["metadata"]["uid"]
    vms = {int(vm.tags["index"]): vm.id for vm in local.find_vms({"owner-uid": uid})}
    assert sorted(vms) == [0, 1, 2, 3]
    survivor_before = containers(body, 3)

    # Three VMs die at once (as when their host fails): the operator is frozen for the moment
    # of the kills, so its next pass sees all three down, not one after another.
    with paused(operator):
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda i: docker_client.containers.get(vms[i]).kill(), (0, 1, 2)))
        wait_for(
            lambda: all(docker_client.containers.get(vms[i]).status == "exited" for i in (0, 1, 2)),
            timeout=60,
            what="three VMs dead",
        )

    def stalled() -> dict[str, Any] | None:
        c = condition(get_object("dyj", "melt-web"), "Stalled")
        return c if c and c["status"] == "True" and c["reason"] == "Meltdown" else None

    stall = wait_for(stalled, timeout=REPAIR_DEADLINE, what="Job Stalled with reason Meltdown")
    assert "3 of 4" in stall["message"], stall
    (event,) = wait_for(
        lambda: events(kubectl, namespace, "Meltdown"), timeout=60, what="a Meltdown Event"
    )
    assert event["type"] == "Warning" and "3 of 4" in event["message"], event

    def nothing_resurrected() -> bool:
        found = {c.name: c.status for c in vm_containers(docker_client, uid)}
        expected = {vms[0]: "exited", vms[1]: "exited", vms[2]: "exited", vms[3]: "running"}
        return found == expected and stalled() is not None

    stays_true(nothing_resurrected, 15, "no VM resurrected during a meltdown")
    # the fourth instance was left alone: same VM, its container never restarted
    assert running_on(local, vms[3], {"srv"})
    survivor = containers(get_object("dyj", "melt-web"), 3)
    assert survivor["srv"]["startedAt"] == survivor_before["srv"]["startedAt"]
    assert survivor["srv"]["restartCount"] == survivor_before["srv"]["restartCount"]
    assert len(events(kubectl, namespace, "ResurrectedVM")) == 0


# --- resurrection disabled ----------------------------------------------------------------------


@uses_operator
def test_disabled_resurrection_leaves_a_dead_vm_dead_and_says_so(
    kubectl: Kubectl, namespace: str, get_object: GetObject, docker_client: Any, local: Any
) -> None:
    job = {
        "name": "web",
        "instances": 1,
        "containers": [{"name": "srv", "image": IMAGE, "command": SLEEP}],
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("off", job, {"enabled": False}))
    wait_ready(get_object, "dyd", "off")
    uid = get_object("dyj", "off-web")["metadata"]["uid"]
    (vm,) = local.find_vms({"owner-uid": uid})
    docker_client.containers.get(vm.id).kill()

    def stalled() -> dict[str, Any] | None:
        c = condition(get_object("dyj", "off-web"), "Stalled")
        ok = c and c["status"] == "True" and c["reason"] == "ResurrectionDisabled"
        return c if ok else None

    stall = wait_for(stalled, timeout=REPAIR_DEADLINE, what="Stalled: ResurrectionDisabled")
    assert "disabled" in stall["message"], stall
    ready = condition(get_object("dyj", "off-web"), "Ready")
    assert ready is not None and ready["status"] == "False"
    wait_for(
        lambda: events(kubectl, namespace, "ResurrectionDisabled"),
        timeout=60,
        what="a ResurrectionDisabled Event",
    )
    stays_true(
        lambda: (
            [(c.name, c.status) for c in vm_containers(docker_client, uid)] == [(vm.id, "exited")]
            and stalled() is not None
        ),
        10,
        "the dead VM left dead",
    )


# --- operator killed mid-resurrection -----------------------------------------------------------


@pytest.mark.parametrize("moment", ["new-vm-seen", "between-create-and-start"])
def test_operator_killed_mid_resurrection_converges_without_duplicate_vms(
    moment: str,
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    crds: None,
    stemcell: None,
    docker_client: Any,
    local: Any,
    tmp_path: Path,
) -> None:
    uid = ""
    with own_operator_namespace(kubectl, kubeconfig, namespace_prefix, "r", tmp_path) as (
        own,
        namespace,
        get_object,
    ):
        own.start()
        kubectl("apply", "-n", namespace, "-f", "-", input=manifest("crash", disk_job("store")))
        wait_ready(get_object, "dyd", "crash")
        uid = get_object("dyj", "crash-store")["metadata"]["uid"]
        original = wait_for(lambda: checksum(local, uid), timeout=60, what="data written")
        (old,) = local.find_vms({"owner-uid": uid})

        if moment == "new-vm-seen":
            docker_client.containers.get(old.id).kill()

            def replacement_appears() -> bool:
                return any(c.name != old.id for c in vm_containers(docker_client, uid))

            wait_for(replacement_appears, timeout=REPAIR_DEADLINE, interval=0.02, what="new VM")
            own.kill()  # mid-resurrection: the new VM exists, its disk and containers may not
        else:
            # The narrowest moment, made on purpose (killing at random hits it about one time in
            # five): the operator deleted the dead VM and created its successor's container, then
            # died before starting it.
            own.kill()
            labels = docker_client.api.inspect_container(old.id)["Config"]["Labels"]
            image = docker_client.api.inspect_container(old.id)["Config"]["Image"]
            local.delete_vm(old.id)
            docker_client.api.create_container(
                image, name=f"dyvm-{uuid.uuid4().hex[:12]}", labels=labels
            )
        mid = {c.name: c.status for c in vm_containers(docker_client, uid)}
        print(f"at the operator's death: {mid}")
        # a VM whose container never started never boots: it must be replaced, not kept
        cut = [name for name, status in mid.items() if status == "created"]

        own.start()

        def converged() -> bool:
            vms = vm_containers(docker_client, uid)
            if len(vms) != 1 or vms[0].name in (old.id, *cut) or vms[0].status != "running":
                return False
            return running_on(local, vms[0].name, {"db", "app"})

        wait_for(converged, timeout=REPAIR_DEADLINE, what="one running VM with db and app")
        wait_ready(get_object, "dyd", "crash")
        (vm,) = vm_containers(docker_client, uid)
        assert vm.labels[LABEL_INDEX] == "0"
        assert checksum(local, uid) == original, "the disk's data changed"
        (disk,) = local.find_disks({"disk": f"{namespace}.crash-store-0"})
        assert disk.attached_to == vm.name
        (instance,) = get_object("dyj", "crash-store")["status"]["instances"]
        assert instance["vmId"] == vm.name
        # a last look: no second VM came up late for index 0
        stays_true(
            lambda: [c.name for c in vm_containers(docker_client, uid)] == [vm.name],
            3,
            "exactly one VM",
        )
    assert not vm_containers(docker_client, uid), "VMs left behind"
    assert not local.find_disks({"disk": f"{namespace}.crash-store-0"}), "disk left behind"


# --- operator outage ------------------------------------------------------------------------------


def test_upstream_restarted_during_an_operator_outage_restarts_its_dependents_on_return(
    kubectl: Kubectl,
    kubeconfig: str,
    namespace_prefix: str,
    crds: None,
    stemcell: None,
    docker_client: Any,
    local: Any,
    tmp_path: Path,
) -> None:
    """Workloads outlive the operator (the engine's restart policy brings a crashed upstream back
    while it is down); when it returns it restarts the dependents the upstream restarted under."""
    job = {
        "name": "chain",
        "instances": 1,
        "containers": [
            {"name": "db", "image": IMAGE, "command": SLEEP},
            {"name": "app", "image": IMAGE, "command": SLEEP, "dependsOn": ["db"]},
        ],
    }
    with own_operator_namespace(kubectl, kubeconfig, namespace_prefix, "o", tmp_path) as (
        own,
        namespace,
        get_object,
    ):
        own.start()
        kubectl("apply", "-n", namespace, "-f", "-", input=manifest("outage", job))
        wait_ready(get_object, "dyd", "outage")
        uid = get_object("dyj", "outage-chain")["metadata"]["uid"]
        (vm,) = local.find_vms({"owner-uid": uid})
        engine = local.docker_client(vm.id)
        try:

            def start_of(name: str) -> str:
                (found,) = engine.containers.list(filters={"label": f"{LABEL_CONTAINER}={name}"})
                return str(found.attrs["State"]["StartedAt"])

            app_before, db_before = start_of("app"), start_of("db")
            own.stop()
            kill_process(docker_client, local, vm.id, "db")
            wait_for(
                lambda: start_of("db") != db_before,
                timeout=REPAIR_DEADLINE,
                what="the engine to restart db on its own",
            )
            # nobody restarts app while the operator is away
            stays_true(lambda: start_of("app") == app_before, 3, "app untouched while away")
            db_during = start_of("db")

            own.start()
            wait_for(
                lambda: start_of("app") != app_before,
                timeout=REPAIR_DEADLINE,
                what="app restarted once the operator is back",
            )
            assert start_of("db") == db_during, "db was restarted again instead of only app"
            assert start_of("app") > db_during  # RFC 3339 UTC timestamps order as strings
        finally:
            engine.close()
        now = containers(wait_ready(get_object, "dyj", "outage-chain"))
        assert "db" in now["app"]["lastRestartReason"], now["app"]


@uses_operator
def test_a_second_vm_for_an_index_is_deleted(
    kubectl: Kubectl, namespace: str, get_object: GetObject, docker_client: Any, local: Any
) -> None:
    job = {
        "name": "solo",
        "instances": 1,
        "containers": [{"name": "srv", "image": IMAGE, "command": SLEEP}],
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("dup", job))
    wait_ready(get_object, "dyd", "dup")
    uid = get_object("dyj", "dup-solo")["metadata"]["uid"]
    (vm,) = local.find_vms({"owner-uid": uid})
    # A VM made behind the operator's back, claiming the same index (created, never started).
    inspected = docker_client.api.inspect_container(vm.id)["Config"]
    extra = f"dyvm-{uuid.uuid4().hex[:12]}"
    docker_client.api.create_container(inspected["Image"], name=extra, labels=inspected["Labels"])
    wait_for(
        lambda: [c.name for c in vm_containers(docker_client, uid)] == [vm.id],
        timeout=REPAIR_DEADLINE,
        what="the duplicate VM deleted and the original kept",
    )
    deleted = [e for e in events(kubectl, namespace, "DeletedVM") if extra in e["message"]]
    assert deleted and "duplicate" in deleted[0]["message"]
