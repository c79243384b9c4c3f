"""Failover of a hot standby: the active operator is SIGKILLed at the moment a container dies;
how long until the standby is active, and until it has restarted the dead container's dependent.
Prints one JSON.

    .venv/bin/python bench/failover.py [--rounds 5] [--lease-duration 6]

Two ``dockyard run --leader-lease`` replicas watch the benchmark's namespace; one Deployment,
one VM: ``db`` and ``app`` (dependsOn db). Per round: SIGKILL of the active replica (no lease
release, as a node failure) and, at once, SIGKILL of db's main process inside its VM (Docker's
restart policy brings db back; only an operator restarts app). Measured from the kill: the
standby's /readyz answering 200 (it holds the lease and kopf is ready) and app's new start on the
VM's engine. The killed replica comes back as the new standby before the next round. Baseline in
the same run: the time Docker's own restart policy takes to bring db back.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from _harness import (
    IMAGE,
    SLEEP,
    Operator,
    bench_world,
    get,
    kubectl,
    log,
    machine_facts,
    ready,
    summary,
    wait_until,
)

DEPLOYMENT = "failover"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def is_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def manifest(root: str) -> str:
    containers = [
        {"name": "db", "image": IMAGE, "command": SLEEP},
        {"name": "app", "image": IMAGE, "command": SLEEP, "dependsOn": ["db"]},
    ]
    return json.dumps(
        {
            "apiVersion": "dockyard.dev/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": DEPLOYMENT},
            "spec": {
                "provider": {"type": "local", "options": {"root": root}},
                "jobs": [{"name": "pair", "instances": 1, "containers": containers}],
            },
        }
    )


def started_at(engine: Any, name: str) -> float:
    (found,) = engine.containers.list(filters={"label": f"dockyard.dev/container={name}"})
    stamp = found.attrs["State"]["StartedAt"][:26].rstrip("Z")
    return datetime.fromisoformat(stamp + "+00:00").timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease-duration", type=float, default=6.0)
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "failover", "machine": machine_facts()}
    with bench_world("failover") as world:
        assert world.operator is not None
        world.operator.stop()  # replaced by two replicas sharing a lease
        ports = [free_port(), free_port()]
        lease = f"{world.namespace}/dockyard"
        replicas = [
            Operator(
                world.namespace,
                world.scratch / f"replica-{n}.log",
                [
                    *("--leader-lease", lease, "--probe-port", str(ports[n])),
                    *("--lease-duration", str(args.lease_duration)),
                ],
                started=b"the lease",
            )
            for n in range(2)
        ]
        try:
            for replica in replicas:
                replica.start()
            wait_until(lambda: any(is_ready(p) for p in ports), 60, "an active replica")
            kubectl("apply", "-n", world.namespace, "-f", "-", stdin=manifest(world.root))
            wait_until(lambda: ready(get("dyd", DEPLOYMENT, world.namespace)), 180, "Ready")
            job = get("dyj", f"{DEPLOYMENT}-pair", world.namespace)
            vm_id = job["status"]["instances"][0]["vmId"]
            provider = world.provider
            engine = provider.docker_client(vm_id)
            vm = provider.client.containers.get(vm_id)
            active_at: list[float] = []
            repaired_at: list[float] = []
            docker_restart: list[float] = []
            for round_number in range(args.rounds):
                active = next(n for n in range(2) if is_ready(ports[n]))
                standby = 1 - active
                app_before = started_at(engine, "app")
                (db,) = engine.containers.list(filters={"label": "dockyard.dev/container=db"})
                pid = db.attrs["State"]["Pid"]
                process = replicas[active].process
                assert process is not None
                process.kill()
                killed = time.time()
                code, output = vm.exec_run(["kill", "-9", str(pid)])
                assert code == 0, output
                wait_until(lambda s=standby: is_ready(ports[s]), 60, "the standby active", 0.05)
                active_at.append(time.time() - killed)
                back = wait_until(
                    lambda before=app_before: (t := started_at(engine, "app")) > before and t,
                    60,
                    "app restarted",
                    interval=0.05,
                )
                repaired_at.append(back - killed)
                docker_restart.append(started_at(engine, "db") - killed)
                log(
                    f"round {round_number}: standby active {active_at[-1]:.2f} s, app "
                    f"restarted {repaired_at[-1]:.2f} s, db by Docker {docker_restart[-1]:.2f} s"
                )
                process.wait(timeout=30)
                replicas[active].start()  # back as the standby
                wait_until(lambda: ready(get("dyd", DEPLOYMENT, world.namespace)), 120, "Ready")
            engine.close()
            result |= {
                "rounds": args.rounds,
                "lease_duration_seconds": args.lease_duration,
                "standby_active_seconds": summary(active_at),
                "dependent_repaired_seconds": summary(repaired_at),
                "baseline_docker_restarts_db_seconds": summary(docker_restart),
                "target_repair_seconds": 10.0,
            }
        finally:
            # The world's cleanup needs an active operator: hand it one of the replicas.
            for replica in replicas:
                if replica.process is None or replica.process.poll() is not None:
                    replica.start()
            world.operator = replicas[0]
    replicas[1].stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
