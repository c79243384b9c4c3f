"""Benchmark of the local provider on this host's Docker; prints one JSON object.

    .venv/bin/python bench/local_provider.py [--vms N] [--idle 10] [--disk-mib 64]

Measures VM create → engine answering (p50/max over N sequential creates), disk create + attach,
an offline grow with checksum-verified data, a copy-migration to a disk twice as big (what a
provider that cannot grow in place gets) with checksum-verified data, the memory of ``--idle``
VMs running at once (their containers' cgroups, as `docker stats` reports them) and delete
times. Everything lives under a temporary root that is purged at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
from tests.providers.local_support import (  # noqa: E402
    checksum,
    local_leftovers,
    make_local_provider,
    purge_local,
    read_file_on_disk,
    write_file_on_disk,
)

from dockyard.providers.base import DiskSpec, VMSpec  # noqa: E402
from dockyard.providers.local import LocalProvider  # noqa: E402
from dockyard.runtime.world import JobIdentity, JobWorld  # noqa: E402

T = TypeVar("T")
MIB = 1024 * 1024


def timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(samples), 3),
        "max": round(max(samples), 3),
        "n": len(samples),
    }


def memory_mib(host: docker.DockerClient, vm_id: str) -> float:
    """What `docker stats` shows: usage less the reclaimable page cache."""
    stats: dict[str, Any] = host.api.stats(vm_id, stream=False, one_shot=True)
    memory = stats["memory_stats"]
    detail = memory.get("stats", {})
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return float(memory["usage"] - cache) / MIB


def bench(provider: LocalProvider, vms: int, idle: int, disk_mib: int) -> dict[str, Any]:
    result: dict[str, Any] = {}

    # VM create → engine ready, sequential, then delete.
    creates, deletes = [], []
    for number in range(vms):
        vm, took = timed(lambda n=number: provider.create_vm(VMSpec(tags={"owner-uid": f"c{n}"})))
        creates.append(took)
        _, took = timed(lambda vm=vm: provider.delete_vm(vm.id))
        deletes.append(took)
    result["vm_create_to_engine_ready_s"] = summary(creates)
    result["vm_delete_s"] = summary(deletes)

    # Disk create + attach, data through the VM, offline grow, checksum.
    vm = provider.create_vm(VMSpec(tags={"owner-uid": "disk"}))
    disk, create_s = timed(
        lambda: provider.create_disk(DiskSpec(tags={"d": "1"}, size_mib=disk_mib))
    )
    attachment, attach_s = timed(lambda: provider.attach_disk(vm.id, disk.id))
    result["disk_create_s"] = round(create_s, 3)
    result["disk_attach_s"] = round(attach_s, 3)
    result["disk_create_and_attach_s"] = round(create_s + attach_s, 3)
    data = os.urandom(disk_mib * MIB // 4)
    write_file_on_disk(provider, vm.id, attachment, "blob", data)

    def grow() -> Any:
        provider.detach_disk(vm.id, disk.id)
        provider.resize_disk(disk.id, disk_mib * 2)
        return provider.attach_disk(vm.id, disk.id)

    attachment, resize_s = timed(grow)
    intact = checksum(read_file_on_disk(provider, vm.id, attachment, "blob")) == checksum(data)
    result["disk_offline_grow_s"] = {
        "detach_resize_attach": round(resize_s, 3),
        "from_mib": disk_mib,
        "to_mib": disk_mib * 2,
        "data_mib": round(len(data) / MIB, 2),
        "checksum_intact": intact,
    }

    # Copy-migration (the fallback for an IaaS that cannot grow a disk): the runtime copies the
    # grown disk onto a new one twice its size in the VM, verifies it, and deletes the old one.
    host = docker.from_env()
    world = JobWorld(provider, JobIdentity("bench", "migrate", "bench"), host, "dockyard/busybox:1")
    grown = provider.find_disks({"d": "1"})[0]
    (migrated, attachment), migrate_s = timed(
        lambda: world.migrate_disk(0, vm, grown, disk_mib * 4, "")
    )
    intact = checksum(read_file_on_disk(provider, vm.id, attachment, "blob")) == checksum(data)
    result["disk_copy_migration_s"] = {
        "create_copy_verify_switch": round(migrate_s, 3),
        "from_mib": grown.size_mib,
        "to_mib": migrated.size_mib,
        "data_mib": round(len(data) / MIB, 2),
        "checksum_intact": intact,
        "old_disk_deleted": grown.id not in {d.id for d in provider.find_disks({})},
    }
    provider.delete_vm(vm.id)
    provider.delete_disk(migrated.id)
    host.close()

    # Idle VMs at once: created in parallel, memory from their cgroups, then deleted together.
    host = docker.from_env()
    try:
        with ThreadPoolExecutor(max_workers=idle) as pool:
            start = time.monotonic()
            made = list(
                pool.map(
                    lambda n: provider.create_vm(VMSpec(tags={"owner-uid": f"idle{n}"})),
                    range(idle),
                )
            )
            parallel_create_s = time.monotonic() - start
            memory = [memory_mib(host, vm.id) for vm in made]
            start = time.monotonic()
            list(pool.map(lambda vm: provider.delete_vm(vm.id), made))
            parallel_delete_s = time.monotonic() - start
    finally:
        host.close()
    result["idle_vms"] = {
        "count": idle,
        "parallel_create_s": round(parallel_create_s, 3),
        "parallel_delete_s": round(parallel_delete_s, 3),
        "memory_total_mib": round(sum(memory), 1),
        "memory_per_vm_mib": summary(memory),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=5, help="sequential creates to time")
    parser.add_argument("--idle", type=int, default=10, help="VMs running at once for memory")
    parser.add_argument("--disk-mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dybench-") as root:
        provider = make_local_provider(Path(root))
        try:
            result = bench(provider, args.vms, args.idle, args.disk_mib)
        finally:
            purge_local(provider)
            left = local_leftovers(provider)
            provider.close()
        result["leftovers"] = left
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
