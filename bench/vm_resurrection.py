"""VM resurrection: kill a Job's VM N times; how fast the operator replaces it, with its persistent
disk reattached and every container running again, and proof the disk's data survived. Prints
one JSON.

    .venv/bin/python bench/vm_resurrection.py [--kills 10]

A Deployment on the local provider, watched by the real operator: one instance with a 64 MiB
persistent disk, ``db`` (writes 4 MB of random data to the disk once, when the file is missing)
and ``app`` (dependsOn db). The file's sha256 is read through the VM once it is Ready; after
every resurrection it is read again through the new VM and must be the same (a fresh disk would
hold new random data, a missing one no file at all).

A kill is ``docker kill`` (SIGKILL) of the VM's container on the host. Death is the host
engine's ``die`` event for it; the replacement VM's ``start`` is the host's event too; its
containers running are the ``start`` events of the new VM's own engine (``timeNano``; ``db``
binds the disk, so it cannot start before the disk is attached). The next kill waits until the
world has settled: one VM, disk attached to it, ``db`` and ``app`` running, the old VM removed,
the Job Ready and its status naming the new VM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from typing import Any

import docker

from _harness import (
    IMAGE,
    LABEL_CONTAINER,
    LABEL_OWNER,
    RUN,
    SLEEP,
    Event,
    EventLog,
    World,
    bench_world,
    get,
    job_manifest,
    kubectl,
    log,
    machine_facts,
    ready,
    summary,
    to_event,
    wait_until,
)
from dockyard.providers import VM, VMState

DEPLOYMENT, JOB = "resurrect", "store"
NAMES = ("db", "app")
SETTLE_TIMEOUT = 120.0


def read_checksum(world: World, vm_id: str) -> str:
    engine = world.provider.docker_client(vm_id)
    try:
        (db,) = engine.containers.list(filters={"label": f"{LABEL_CONTAINER}=db"})
        code, out = db.exec_run(["sh", "-c", "test -s /data/blob && cat /data/blob"])
    finally:
        engine.close()
    if code != 0:
        raise RuntimeError(f"reading /data/blob on {vm_id}: exit {code}")
    return hashlib.sha256(out).hexdigest()


def inner_starts(world: World, vm_id: str, after_ns: int) -> dict[str, int]:
    """The last ``start`` of each container on a VM's engine since ``after_ns``, from the
    engine's event log (``since``/``until`` replay what happened before we asked)."""
    engine = world.provider.docker_client(vm_id)
    try:
        stream = engine.events(
            since=f"{after_ns / 1e9 - 1:.9f}",
            until=f"{time.time():.9f}",
            decode=True,
            filters={"type": "container", "event": "start"},
        )
        events = [to_event(raw) for raw in stream]
    finally:
        engine.close()
    return {e.name: e.at_ns for e in events if e.action == "start" and e.at_ns > after_ns}


def settled(world: World, uid: str, old: str, disk_id: str) -> VM | None:
    provider = world.provider
    vms = provider.find_vms({"owner-uid": uid})
    if len(vms) != 1 or vms[0].id == old or vms[0].state is not VMState.RUNNING:
        return None
    new = vms[0]
    (disk,) = provider.find_disks({"disk": f"{world.namespace}.{DEPLOYMENT}-{JOB}-0"})
    if (disk.id, disk.attached_to) != (disk_id, new.id):
        return None
    engine = provider.docker_client(new.id)
    try:
        found = engine.containers.list(filters={"label": LABEL_CONTAINER})
    finally:
        engine.close()
    if {c.labels[LABEL_CONTAINER] for c in found if c.status == "running"} != set(NAMES):
        return None
    job = get("dyj", f"{DEPLOYMENT}-{JOB}", world.namespace)
    instances = (job.get("status") or {}).get("instances", [])
    if not ready(job) or [i.get("vmId") for i in instances] != [new.id]:
        return None
    return new


def one_kill(
    world: World,
    host: docker.DockerClient,
    events: EventLog,
    uid: str,
    old: str,
    disk_id: str,
) -> tuple[VM, dict[str, float]]:
    """Kill VM ``old``; the settled replacement and the times of its resurrection."""
    before = time.time_ns()
    host.containers.get(old).kill()  # SIGKILL of the VM's init: the VM is dead
    died = wait_until(lambda: events.first("die", old, before), 10, "the VM's death")

    def replacement() -> Event | None:
        after = events.since(died.at_ns)
        return next((e for e in after if e.action == "start" and e.name != old), None)

    boot = wait_until(replacement, SETTLE_TIMEOUT, "a replacement VM", 0.1)
    vm = wait_until(
        lambda: settled(world, uid, old, disk_id),
        SETTLE_TIMEOUT,
        "the replacement settled",
        0.2,
    )
    starts = inner_starts(world, vm.id, died.at_ns)
    if set(starts) < set(NAMES):
        raise RuntimeError(f"no start event for {set(NAMES) - set(starts)} on {vm.id}")
    sample = {
        "vm_started_s": (boot.at_ns - died.at_ns) / 1e9,
        "all_running_s": (max(starts[n] for n in NAMES) - died.at_ns) / 1e9,
        "db_running_s": (starts["db"] - died.at_ns) / 1e9,
    }
    removed = events.first("destroy", old, died.at_ns)
    if removed is not None:
        sample["old_vm_removed_s"] = (removed.at_ns - died.at_ns) / 1e9
    return vm, sample


def run(world: World, kills: int) -> dict[str, Any]:
    provider = world.provider
    job = {
        "name": JOB,
        "instances": 1,
        "persistentDisk": {"size": "64Mi", "reclaimPolicy": "Delete"},
        "containers": [
            {
                "name": "db",
                "image": IMAGE,
                "command": [
                    "sh",
                    "-c",
                    "test -f /data/blob || head -c 4000000 /dev/urandom > /data/blob; " + RUN,
                ],
                "volumes": [{"subPath": "db", "mountPath": "/data"}],
            },
            {"name": "app", "image": IMAGE, "command": SLEEP, "dependsOn": ["db"]},
        ],
    }
    kubectl(
        "apply", "-n", world.namespace, "-f", "-", stdin=job_manifest(DEPLOYMENT, world.root, job)
    )
    wait_until(lambda: ready(get("dyd", DEPLOYMENT, world.namespace)), 180, "Ready", 0.5)
    uid = get("dyj", f"{DEPLOYMENT}-{JOB}", world.namespace)["metadata"]["uid"]
    (vm,) = provider.find_vms({"owner-uid": uid})
    (disk,) = provider.find_disks({"disk": f"{world.namespace}.{DEPLOYMENT}-{JOB}-0"})
    checksum = wait_until(lambda: read_checksum(world, vm.id), 60, "the data written", 0.2)

    host = docker.from_env()
    events = EventLog(docker.from_env(), {"label": [f"{LABEL_OWNER}={uid}"]}).start()
    vm_started, all_running, old_removed, verified = [], [], [], 0
    mismatches: list[str] = []
    per_kill: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        for number in range(1, kills + 1):
            vm, sample = one_kill(world, host, events, uid, vm.id, disk.id)
            now = read_checksum(world, vm.id)
            if now != checksum:
                mismatches.append(f"kill {number}: {now} on {vm.id}")
            verified += 1
            if "old_vm_removed_s" in sample:
                old_removed.append(sample["old_vm_removed_s"])
            vm_started.append(sample["vm_started_s"])
            all_running.append(sample["all_running_s"])
            per_kill.append({k: round(v, 3) for k, v in sample.items()})
            log(
                f"kill {number}/{kills}: new VM started {sample['vm_started_s']:.2f}s, "
                f"all containers running {sample['all_running_s']:.2f}s, "
                f"checksum {'intact' if now == checksum else 'CHANGED'}"
            )
    finally:
        events.close()
        host.close()

    running = summary(all_running)
    return {
        "benchmark": "vm_resurrection",
        "kills": kills,
        "duration_s": round(time.monotonic() - started, 1),
        "kill": "docker kill (SIGKILL) of the VM's container on the host",
        "timing": (
            "host engine events (timeNano): VM die -> replacement VM start; the new VM's engine "
            "events: -> last container start (db binds the disk: it starts after the attach)"
        ),
        "cadence": "next kill once settled: one VM, disk on it, db+app running, old VM gone, "
        "Job Ready naming the new VM, checksum verified",
        "replacement_vm_started_s": summary(vm_started),
        "all_containers_running_s": running,
        "old_vm_removed_s": summary(old_removed),
        "checksum": {
            "sha256_before_first_kill": checksum,
            "verified_after_kills": verified,
            "mismatches": mismatches,
            "intact": verified == kills and not mismatches,
        },
        "disk": {"id": disk.id, "size": "64Mi", "data_bytes": 4_000_000},
        "targets": {
            "resurrection_p50_le_10s": running.get("p50", 99) <= 10.0,
            "data_intact_every_time": verified == kills and not mismatches,
        },
        "per_kill": per_kill,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    facts = machine_facts()
    with bench_world("resurrect") as world:
        result = run(world, args.kills)
    result["leftovers"] = world.leftovers
    result["machine"] = facts | {"load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
