"""Container repair: SIGKILL an upstream container N times; how fast it and its dependents run
again under Dockyard, against Docker's own ``restart: always`` in the same run. Prints one JSON.

    .venv/bin/python bench/container_repair.py [--kills 50] [--min-uptime 12]

Dockyard side: a Deployment on the local provider, watched by the real operator, with one job of
three containers, ``db`` ← ``app`` (dependsOn db) ← ``worker`` (dependsOn app). Baseline: a VM
of the same stemcell (same kind of inner Docker engine) made directly through the provider, no
operator, running the same three containers with the same configuration (``restart: always``).

Every kill is a SIGKILL of the container's main process from inside its VM (``docker kill``
would count as a manual stop and disable the restart policy). Times come from the VM engine's
own events (``timeNano``): death = ``die``, running again = the next ``start``; dependents are
running again at the last ``start`` each of them had after the death (it must follow the
upstream's start). No polling is timed.

Cadence, the same for both sides: Docker delays a restart by 100 ms, doubling when a container
dies again less than 10 s after it started, so a victim is killed only after it has run
``--min-uptime`` seconds (12 by default) since its last start, and only once its world has
settled (both sides: the engine quiet for 1 s, every container running; Dockyard: also every
dependent restarted after the upstream and the Job's status showing it). Every figure is therefore
Docker's first-failure regime. The two sides are killed alternately, one at a time, the order
swapping every round, so machine noise falls on both alike. One warm-up round is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import docker

from _harness import (
    IMAGE,
    SLEEP,
    EventLog,
    World,
    bench_world,
    get,
    job_manifest,
    kubectl,
    log,
    machine_facts,
    quiet_for,
    ready,
    status_containers,
    summary,
    wait_until,
)
from dockyard.providers.base import VMSpec
from dockyard.runtime.engine import ContainerConfig, Engine

DEPLOYMENT, JOB = "repair", "chain"
UPSTREAM = "db"
DEPENDENTS = ("app", "worker")  # app dependsOn db, worker dependsOn app
NAMES = (UPSTREAM, *DEPENDENTS)
SETTLE_TIMEOUT = 60.0
CONFIG_KEYS = ("Image", "Entrypoint", "Cmd", "StopSignal", "Env")
QUIET = 1.0  # seconds without an engine event before a world counts as settled


def started_ns(value: str) -> int:
    """Docker's RFC 3339 StartedAt (nanoseconds) as epoch nanoseconds."""
    head, _, rest = value.rstrip("Z").partition(".")
    whole = int(datetime.fromisoformat(head + "+00:00").timestamp())
    return whole * 1_000_000_000 + int((rest + "000000000")[:9])


@dataclass
class Side:
    """One VM whose upstream gets killed: Dockyard's, or the baseline's."""

    name: str
    vm_id: str
    engine: docker.DockerClient
    events: EventLog
    settled: Callable[[int, int], bool] = lambda died, up: True  # replaced per side
    upstream_s: list[float] = field(default_factory=list)
    dependents_s: list[float] = field(default_factory=list)
    after_upstream_s: list[float] = field(default_factory=list)
    extra_restarts: int = 0  # dependent starts beyond one per kill
    out_of_order: int = 0  # a dependent's last start before its upstream's
    failures: list[str] = field(default_factory=list)
    # Where the dependents' time goes, per kill: upstream start -> the operator's first action
    # on app (its SIGTERM), app's restart, app start -> first action on worker, worker's restart.
    breakdown: dict[str, list[float]] = field(default_factory=dict)

    def uptime(self) -> float:
        state = self.engine.api.inspect_container(UPSTREAM)["State"]
        if not state.get("Running"):
            return 0.0
        return (time.time_ns() - started_ns(state["StartedAt"])) / 1e9

    def all_running(self) -> bool:
        found = self.engine.containers.list(all=True)
        return {c.name for c in found if c.status == "running"} >= set(NAMES)


def kill_main_process(host: docker.DockerClient, side: Side) -> int:
    """SIGKILL the upstream's main process from inside its VM; returns the time just before."""
    pid = side.engine.api.inspect_container(UPSTREAM)["State"]["Pid"]
    if not pid:
        raise RuntimeError(f"{side.name}: {UPSTREAM} has no process")
    before = time.time_ns()
    code, output = host.containers.get(side.vm_id).exec_run(["kill", "-9", str(pid)])
    if code != 0:
        raise RuntimeError(f"{side.name}: kill -9 {pid} failed: {output!r}")
    return before


def one_kill(host: docker.DockerClient, side: Side, min_uptime: float, record: bool) -> None:
    wait_until(lambda: side.uptime() >= min_uptime, min_uptime + 30, f"{side.name} uptime")
    before = kill_main_process(host, side)
    events = side.events
    die = wait_until(lambda: events.first("die", UPSTREAM, before), 10, "the die event")
    up = wait_until(
        lambda: events.first("start", UPSTREAM, die.at_ns), SETTLE_TIMEOUT, "the upstream back"
    )
    wait_until(
        lambda: side.settled(die.at_ns, up.at_ns), SETTLE_TIMEOUT, f"{side.name} settled", 0.1
    )
    if not record:
        return
    side.upstream_s.append((up.at_ns - die.at_ns) / 1e9)
    if side.name == "baseline":
        return
    after = events.since(die.at_ns)
    last: dict[str, int] = {}
    previous = up.at_ns
    for name in DEPENDENTS:
        starts = [e.at_ns for e in after if (e.action, e.name) == ("start", name)]
        side.extra_restarts += len(starts) - 1
        last[name] = starts[-1]
        touched = min(e.at_ns for e in after if e.name == name)
        for part, took in (
            (f"{name}_reaction", touched - previous),
            (f"{name}_restart", last[name] - touched),
        ):
            side.breakdown.setdefault(part, []).append(took / 1e9)
        previous = last[name]
    chain = [up.at_ns] + [last[n] for n in DEPENDENTS]
    side.out_of_order += int(chain != sorted(chain))
    everyone = max(last.values())
    side.dependents_s.append((everyone - die.at_ns) / 1e9)
    side.after_upstream_s.append((everyone - up.at_ns) / 1e9)


def dockyard_settled(world: World, side: Side, job_before: dict[str, str]) -> Callable[..., bool]:
    def settled(died: int, up: int) -> bool:
        events = side.events.since(died)
        for name in DEPENDENTS:
            if not any(e.action == "start" and e.name == name and e.at_ns >= up for e in events):
                return False
        if not quiet_for(side.events, QUIET) or not side.all_running():
            return False
        # The operator has seen it too: the Job's status shows every container started anew.
        now = status_containers(get("dyj", f"{DEPLOYMENT}-{JOB}", world.namespace))
        for name in NAMES:
            entry = now.get(name, {})
            if entry.get("state") != "running" or entry.get("startedAt") == job_before[name]:
                return False
        for name in NAMES:
            job_before[name] = now[name]["startedAt"]
        return True

    return settled


def baseline_settled(side: Side) -> Callable[..., bool]:
    def settled(died: int, up: int) -> bool:
        return quiet_for(side.events, QUIET) and side.all_running()

    return settled


def run(world: World, kills: int, min_uptime: float) -> dict[str, Any]:
    provider = world.provider
    host = docker.from_env()
    job = {
        "name": JOB,
        "instances": 1,
        "containers": [
            {"name": "db", "image": IMAGE, "command": SLEEP},
            {"name": "app", "image": IMAGE, "command": SLEEP, "dependsOn": ["db"]},
            {"name": "worker", "image": IMAGE, "command": SLEEP, "dependsOn": ["app"]},
        ],
    }
    kubectl(
        "apply", "-n", world.namespace, "-f", "-", stdin=job_manifest(DEPLOYMENT, world.root, job)
    )
    wait_until(lambda: ready(get("dyd", DEPLOYMENT, world.namespace)), 180, "Ready", 0.5)
    body = get("dyj", f"{DEPLOYMENT}-{JOB}", world.namespace)
    (vm,) = provider.find_vms({"owner-uid": body["metadata"]["uid"]})

    # The baseline: a VM of the same stemcell, the same containers, no operator.
    baseline_vm = provider.create_vm(VMSpec(tags={"owner-uid": f"baseline-{world.root[-8:]}"}))
    dy_engine = provider.docker_client(vm.id)
    reference = dy_engine.api.inspect_container(UPSTREAM)
    baseline_engine = provider.docker_client(baseline_vm.id)
    runner = Engine(baseline_engine, image_source=host)
    for name in NAMES:
        runner.run(
            ContainerConfig(
                name=name,
                image=IMAGE,
                entrypoint=reference["Config"]["Entrypoint"],
                command=reference["Config"]["Cmd"],
                restart_policy="Always",
            ),
            {},
        )
    copy = baseline_engine.api.inspect_container(UPSTREAM)
    same = {k: (reference["Config"].get(k), copy["Config"].get(k)) for k in CONFIG_KEYS}
    same["RestartPolicy"] = (
        reference["HostConfig"]["RestartPolicy"],
        copy["HostConfig"]["RestartPolicy"],
    )
    different = {k: v for k, v in same.items() if v[0] != v[1]}
    if different:
        raise RuntimeError(f"the baseline container differs: {different}")

    job_before = {n: c["startedAt"] for n, c in status_containers(body).items()}
    dy = Side("dockyard", vm.id, dy_engine, EventLog(provider.docker_client(vm.id)).start())
    dy.settled = dockyard_settled(world, dy, job_before)
    base = Side(
        "baseline",
        baseline_vm.id,
        baseline_engine,
        EventLog(provider.docker_client(baseline_vm.id)).start(),
    )
    base.settled = baseline_settled(base)
    wait_until(lambda: base.all_running() and dy.all_running(), 60, "both sides running")
    started = time.monotonic()
    try:
        for number in range(kills + 1):  # round 0 is the warm-up
            order = (dy, base) if number % 2 == 0 else (base, dy)
            for side in order:
                try:
                    one_kill(host, side, min_uptime, record=number > 0)
                except TimeoutError as error:
                    side.failures.append(f"kill {number}: {error}")
                    log(f"{side.name} kill {number}: {error}")
                    if len(side.failures) >= 3:
                        raise
            if number:
                log(
                    f"kill {number}/{kills}: dockyard db {dy.upstream_s[-1]:.3f}s, "
                    f"dependents {dy.dependents_s[-1]:.3f}s; baseline {base.upstream_s[-1]:.3f}s"
                )
    finally:
        for side in (dy, base):
            side.events.close()
            side.engine.close()
        host.close()

    dockyard, baseline = summary(dy.upstream_s), summary(base.upstream_s)
    ratio = {
        key: round(dockyard[key] / baseline[key], 2)
        for key in ("p50", "p95", "p99", "max")
        if baseline.get(key)
    }
    after = summary(dy.after_upstream_s)
    return {
        "benchmark": "container_repair",
        "kills": kills,
        "duration_s": round(time.monotonic() - started, 1),
        "cadence": (
            f"sides killed alternately, one at a time (order swapped every round), each victim "
            f"only after >= {min_uptime:g}s up since its last start (Docker's restart delay "
            f"resets after 10s up: every kill is Docker's first-failure regime, 100 ms delay) "
            f"and after its world settled (engine quiet {QUIET:g}s, all containers running; "
            "Dockyard also: dependents restarted after the upstream, Job status updated); "
            "1 warm-up round not counted"
        ),
        "kill": "SIGKILL of the container's main process from inside its VM (kill -9 <pid>)",
        "timing": "VM engine events (timeNano): die -> start; dependents: last start after die",
        "dockyard": {
            "upstream_running_s": dockyard,
            "all_dependents_running_s": summary(dy.dependents_s),
            "dependents_after_upstream_s": after,
            "dependents_breakdown_s": {
                part: {k: v for k, v in summary(samples).items() if k in ("p50", "p95", "max")}
                for part, samples in dy.breakdown.items()
            },
            "extra_dependent_restarts": dy.extra_restarts,
            "dependents_out_of_order": dy.out_of_order,
            "failures": dy.failures,
        },
        "baseline_docker_restart_always": {
            "upstream_running_s": baseline,
            "failures": base.failures,
        },
        "ratio_dockyard_over_baseline_upstream": ratio,
        "targets": {
            "repair_p99_le_1s": dockyard.get("p99", 99) <= 1.0,
            "repair_p99_le_1_5x_baseline": ratio.get("p99", 99) <= 1.5,
            "dependents_p99_le_1s_after_upstream": after.get("p99", 99) <= 1.0,
        },
        "samples_s": {
            "dockyard_upstream": [round(x, 4) for x in dy.upstream_s],
            "dockyard_all_dependents": [round(x, 4) for x in dy.dependents_s],
            "baseline_upstream": [round(x, 4) for x in base.upstream_s],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="kills per side (after 1 warm-up)")
    parser.add_argument(
        "--min-uptime", type=float, default=12.0, help="seconds a victim runs before its kill"
    )
    args = parser.parse_args()
    facts = machine_facts()
    with bench_world("repair") as world:
        result = run(world, args.kills, args.min_uptime)
    result["leftovers"] = world.leftovers
    result["machine"] = facts | {"load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
