"""Scale and soak: N Deployments x 2 VMs x 3 containers on one machine, then random kills.
Prints one JSON.

    .venv/bin/python bench/scale.py [--deployments 50] [--window 60] [--chaos-minutes 10]

Each Deployment: one job of 2 instances with a persistent disk; ``db`` writes 1 MiB of random
data to the disk once, ``app`` dependsOn db, ``worker`` dependsOn app. Measured:

- apply → every Deployment Ready (the operator watching only the benchmark's namespace);
- at steady state, over ``--window`` seconds: the operator's RSS, CPU (% of one core), threads
  and open sockets (per VM), and the apiserver's requests per minute (``apiserver_request_total``,
  all verbs, and writes to dockyard.dev objects and Events; cluster-wide, so exact only when
  nothing else talks to it);
- then ``--chaos-minutes`` of kills, one every ``--kill-every`` seconds: mostly a container's
  main process (SIGKILL inside its VM), sometimes a whole VM (``--vm-share``), never two VMs of
  one Deployment at once (below the meltdown guard); then, once every Deployment is Ready again:
  VMs and disks per instance (duplicates), and each disk's data checksum against the one taken
  before the kills (bytes lost).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import docker

from _harness import (
    IMAGE,
    World,
    apiserver_requests,
    bench_world,
    kubectl,
    log,
    machine_facts,
    wait_until,
)
from dockyard.providers.base import DiskSpec, VMSpec

RUN = "trap 'exit 0' TERM; sleep 100000 & wait"
DB = (
    "[ -s /data/blob ] || head -c 1048576 /dev/urandom > /data/blob; " + RUN
)  # written once: it must survive every kill


def manifest(name: str, root: str, canaries: int) -> str:
    sleep = ["sh", "-c", RUN]
    containers = [
        {
            "name": "db",
            "image": IMAGE,
            "command": ["sh", "-c", DB],
            "volumes": [{"name": "data", "mountPath": "/data"}],
        },
        {"name": "app", "image": IMAGE, "command": sleep, "dependsOn": ["db"]},
        {"name": "worker", "image": IMAGE, "command": sleep, "dependsOn": ["app"]},
    ]
    job = {
        "name": "svc",
        "instances": 2,
        "persistentDisk": {"size": "64Mi"},
        "containers": containers,
    }
    return json.dumps(
        {
            "apiVersion": "dockyard.dev/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "provider": {"type": "local", "options": {"root": root}},
                "update": {"canaries": canaries, "maxInFlight": "100%"},
                "jobs": [job],
            },
        }
    )


def ready_count(namespace: str) -> int:
    listed = json.loads(kubectl("get", "dyd", "-n", namespace, "-o", "json"))
    count = 0
    for item in listed["items"]:
        status = item.get("status") or {}
        at = status.get("observedGeneration") == item["metadata"]["generation"]
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        count += int(at and ready)
    return count


def process_facts(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    sockets = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            sockets += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return {"rss_mib": rss / 1024, "threads": threads, "cpu_seconds": cpu, "sockets": sockets}


def converged(world: World, deployments: int) -> bool:
    """Every Deployment Ready, and each of its instances' VMs running its three containers."""
    if ready_count(world.namespace) != deployments:
        return False
    provider = world.provider
    vms = [vm for vm in provider.find_vms({}) if vm.state.value == "running"]
    if len(vms) != 2 * deployments:
        return False
    for vm in vms:
        engine = provider.docker_client(vm.id)
        try:
            if len(engine.containers.list()) != 3:
                return False
        finally:
            engine.close()
    return True


def instance_of(vm: Any) -> tuple[str, str]:
    return vm.tags.get("owner-uid", ""), vm.tags.get("index", "")


def checksums(world: World) -> dict[tuple[str, str], str]:
    """Each instance's data checksum, read through its db container."""
    provider = world.provider
    sums: dict[tuple[str, str], str] = {}
    for vm in provider.find_vms({}):
        engine = provider.docker_client(vm.id)
        try:
            found = engine.containers.list(filters={"label": "dockyard.dev/container=db"})
            for db in found:
                code, out = db.exec_run(["sha256sum", "/data/blob"])
                if code == 0:
                    sums[instance_of(vm)] = out.decode().split()[0]
        finally:
            engine.close()
    return sums


def chaos(world: World, minutes: float, every: float, vm_share: float) -> dict[str, int]:
    """Random kills for ``minutes``: a container's main process, or (``vm_share``) a VM."""
    provider = world.provider
    rng = random.Random(7)
    kills = collections.Counter[str]()
    end = time.monotonic() + minutes * 60
    vm_down: dict[str, float] = {}  # deployment -> when its VM was killed
    while time.monotonic() < end:
        vms = [vm for vm in provider.find_vms({}) if vm.state.value == "running"]
        if vms:
            vm = rng.choice(vms)
            deployment = vm.tags.get("deployment", "")
            recently = time.monotonic() - vm_down.get(deployment, -1e9) < 60
            try:
                if rng.random() < vm_share and not recently:
                    provider.client.containers.get(vm.id).kill()
                    vm_down[deployment] = time.monotonic()
                    kills["vm"] += 1
                else:
                    engine = provider.docker_client(vm.id)
                    try:
                        running = engine.containers.list()
                        if running:
                            victim = rng.choice(running)
                            pid = victim.attrs["State"]["Pid"]
                            container = provider.client.containers.get(vm.id)
                            code, _ = container.exec_run(["kill", "-9", str(pid)])
                            kills["container"] += int(code == 0)
                    finally:
                        engine.close()
            except Exception as error:  # a VM going away under us: the next kill goes on
                kills["missed"] += 1
                log(f"kill missed: {error}")
        time.sleep(every)  # the kill rate itself, not a synchronisation
    return dict(kills)


def baseline_boot(world: World, vms: int, threads: int = 32) -> float:
    """Seconds to create ``vms`` bare VMs straight through the provider, ``threads`` at once
    (the operator's pool for the local provider), each until its engine answers: the floor
    under the operator's time to Ready. They are deleted again."""
    provider = world.provider

    def boot(number: int) -> Any:
        return provider.create_vm(VMSpec(tags={"owner-uid": "baseline", "index": str(number)}))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        made = list(pool.map(boot, range(vms)))
    took = time.monotonic() - started
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda vm: provider.delete_vm(vm.id), made))
    return took


def baseline_workload(world: World, vms: int, threads: int = 32) -> float:
    """Seconds for a script to do what the operator does for the same workload, straight through
    the provider and each VM's engine, ``threads`` at once: per instance a 64 MiB disk, a VM, the
    disk attached, the image loaded, then db, app and worker started in order. No API, no
    status, no health checks: the floor the machine puts under the operator's time to Ready."""
    provider = world.provider
    host = docker.from_env()
    tarball = b"".join(host.images.get(IMAGE).save(named=True))
    host.close()

    def instance(number: int) -> tuple[str, str]:
        tags = {"owner-uid": "baseline-workload", "index": str(number)}
        disk = provider.create_disk(DiskSpec(tags=tags, size_mib=64))
        vm = provider.create_vm(VMSpec(tags=tags))
        mounted = provider.attach_disk(vm.id, disk.id).mount_path
        engine = provider.docker_client(vm.id)
        try:
            engine.images.load(tarball)
            for name in ("db", "app", "worker"):
                binds = [f"{mounted}:/data"] if name == "db" else []
                command = ["sh", "-c", DB if name == "db" else RUN]
                engine.containers.run(IMAGE, command, name=name, volumes=binds, detach=True)
        finally:
            engine.close()
        return vm.id, disk.id

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        made = list(pool.map(instance, range(vms)))
    took = time.monotonic() - started
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda ids: provider.delete_vm(ids[0]), made))
        list(pool.map(lambda ids: provider.delete_disk(ids[1]), made))
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--chaos-minutes", type=float, default=10.0)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--vm-share", type=float, default=0.15)
    parser.add_argument(
        "--canaries",
        type=int,
        default=1,
        help="update.canaries of each Deployment (1: BOSH's way, a canary instance first)",
    )
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the bare-VM boot"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "scale", "machine": machine_facts()}
    with bench_world("scale") as world:
        assert world.operator is not None and world.operator.process is not None
        pid = world.operator.process.pid
        if args.baseline:
            floor = baseline_boot(world, 2 * args.deployments)
            result["baseline_bare_vms_booted_seconds"] = round(floor, 1)
            log(f"baseline: {2 * args.deployments} bare VMs booted in {floor:.1f} s")
            scripted = baseline_workload(world, 2 * args.deployments)
            result["baseline_scripted_workload_seconds"] = round(scripted, 1)
            log(f"baseline: the same workload by a script in {scripted:.1f} s")
        started, ramp_cpu = time.monotonic(), process_facts(pid)["cpu_seconds"]
        # One apply for all (kubectl takes ~0.5 s to start: 50 of them would be the bottleneck).
        items = [
            json.loads(manifest(f"s{number}", world.root, args.canaries))
            for number in range(args.deployments)
        ]
        every = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        kubectl("apply", "-n", world.namespace, "-f", "-", stdin=every)
        wait_until(
            lambda: ready_count(world.namespace) == args.deployments,
            900,
            "every Deployment Ready",
            interval=1.0,
        )
        vms = len(world.provider.find_vms({}))
        result |= {
            "deployments": args.deployments,
            "canaries": args.canaries,
            "vms": vms,
            "containers": vms * 3,
            "all_ready_seconds": round(time.monotonic() - started, 1),
            # What the operator itself took of the 2 cores while they were the limit.
            "operator_cpu_seconds_to_ready": round(process_facts(pid)["cpu_seconds"] - ramp_cpu, 1),
        }
        if args.baseline:
            ready = result["all_ready_seconds"]
            for ratio, baseline in (
                ("ready_over_scripted_workload", "baseline_scripted_workload_seconds"),
                ("ready_over_baseline", "baseline_bare_vms_booted_seconds"),
            ):
                result[ratio] = round(ready / max(result[baseline], 0.1), 2)
        log(
            f"{vms} VMs Ready in {result['all_ready_seconds']} s, the operator's CPU "
            f"{result['operator_cpu_seconds_to_ready']} s"
        )
        time.sleep(10)  # the last status writes land before the window opens
        before, requests_before = process_facts(pid), apiserver_requests()
        time.sleep(args.window)  # the measurement window itself
        after, requests_after = process_facts(pid), apiserver_requests()
        minutes = args.window / 60
        result["steady_state"] = {
            "window_seconds": args.window,
            "operator_rss_mib": round(after["rss_mib"], 1),
            "operator_cpu_percent_of_a_core": round(
                100 * (after["cpu_seconds"] - before["cpu_seconds"]) / args.window, 2
            ),
            "operator_threads": after["threads"],
            "operator_sockets": after["sockets"],
            "operator_sockets_per_vm": round(after["sockets"] / max(vms, 1), 2),
            "apiserver_requests_per_minute": round(
                (requests_after[0] - requests_before[0]) / minutes, 1
            ),
            "apiserver_writes_per_minute": round(
                (requests_after[1] - requests_before[1]) / minutes, 1
            ),
        }
        log(f"steady state: {result['steady_state']}")
        if args.chaos_minutes > 0:
            sums_before = checksums(world)
            kills = chaos(world, args.chaos_minutes, args.kill_every, args.vm_share)
            chaos_end = time.monotonic()
            wait_until(
                lambda: converged(world, args.deployments),
                900,
                "every Deployment Ready, every VM with its 3 containers, after the kills",
                interval=1.0,
            )
            found = world.provider.find_vms({})
            per_instance = collections.Counter(instance_of(vm) for vm in found)
            disks = collections.Counter(
                disk.tags.get("disk", disk.id) for disk in world.provider.find_disks({})
            )
            sums_after = checksums(world)
            result["soak"] = {
                "minutes": args.chaos_minutes,
                "kills": kills,
                "converged_seconds_after_last_kill": round(time.monotonic() - chaos_end, 1),
                "instances": len(per_instance),
                "duplicate_vms": sum(n - 1 for n in per_instance.values() if n > 1),
                "duplicate_disks": sum(n - 1 for n in disks.values() if n > 1),
                "checksums_compared": len(sums_before),
                "checksums_changed_or_missing": sum(
                    sums_after.get(key) != value for key, value in sums_before.items()
                ),
            }
            log(f"soak: {result['soak']}")
        result["operator_rss_mib_at_end"] = round(process_facts(pid)["rss_mib"], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
