"""Dependents side by side with docker compose v2: the same db <- app <- worker graph, run by
docker compose on the host's engine (``depends_on: {condition: service_started, restart:
true}``) and by Dockyard on a local VM (``dependsOn``), in the same run. Prints one JSON.

    .venv/bin/python bench/peer_compose.py [--rounds 5] [--settle 20]

Three scenarios, each ``--rounds`` times on both sides, alternately:

- ``upstream_crash``: db's process is SIGKILLed (the engine's restart policy brings it back).
  Compose restarts dependents only when compose itself restarted the upstream: app and worker
  stay as they were. Dockyard restarts them after db.
- ``explicit_restart``: ``docker compose restart db`` against a Dockyard rolling restart
  (``dockyard.dev/restartedAt``): every container runs again, dependents after db.
- ``upstream_unhealthy``: db's health check starts failing. Compose marks it unhealthy and does
  nothing; Dockyard restarts it, then its dependents.

Times are the engines' own (State.StartedAt) from the moment of the act: "back" is when db runs
again, "all" when db, app and worker have all started since (null where a side never restarts a
dependent within ``--settle`` seconds). docker compose is built from the Go module proxy by
``hack/compose.sh`` (v5.6.0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import yaml

from _harness import (
    IMAGE,
    REPO,
    World,
    bench_world,
    get,
    job_manifest,
    kubectl,
    log,
    machine_facts,
    ready,
    summary,
    wait_until,
)

NAMES = ("db", "app", "worker")
# db makes its health file when it starts: a restart heals it.
DB = "touch /tmp/ok; trap 'exit 0' TERM; sleep 100000 & wait"
REST = "trap 'exit 0' TERM; sleep 100000 & wait"


def started(container: Any) -> float:
    container.reload()
    text = container.attrs["State"]["StartedAt"]
    head, _, rest = text.rstrip("Z").partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6] or "0"
    return datetime.fromisoformat(f"{head}.{fraction}+00:00").timestamp()


@dataclass
class Side:
    """One way of running the graph: its containers (by name) and how to act on them."""

    name: str
    containers: Callable[[], dict[str, Any]]
    kill: Callable[[Any], None]
    restart: Callable[[], None]

    def measure(self, act: Callable[[], None], settle: float) -> dict[str, float | None]:
        before = {n: started(c) for n, c in self.containers().items()}
        t0 = time.time()
        act()

        def db_back() -> float | None:
            now = started(self.containers()["db"])
            return now if now > before["db"] else None

        try:
            back = wait_until(db_back, settle, f"{self.name}: db running again", interval=0.05)
        except TimeoutError:
            return {"back": None, "all": None}  # nobody restarted it

        def all_moved() -> dict[str, float] | None:
            now = {n: started(c) for n, c in self.containers().items()}
            moved = all(now[n] > before[n] and now[n] >= back for n in NAMES)
            return now if moved else None

        try:
            every = wait_until(all_moved, settle, f"{self.name}: dependents", interval=0.1)
            whole: float | None = max(every.values()) - t0
        except TimeoutError:
            whole = None  # the dependents were left alone
        return {"back": round(back - t0, 3), "all": None if whole is None else round(whole, 3)}


def compose_side(scratch: Path, client: docker.DockerClient) -> tuple[Side, Callable[[], None]]:
    binary = subprocess.run(
        ["bash", str(REPO / "hack" / "compose.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    project = f"dypeer{os.getpid()}"
    service = {"image": IMAGE, "restart": "always", "stop_grace_period": "2s"}
    spec = {
        "services": {
            "db": {
                **service,
                "command": ["sh", "-c", DB],
                "healthcheck": {
                    "test": ["CMD", "test", "-f", "/tmp/ok"],
                    "interval": "1s",
                    "retries": 1,
                },
            },
            "app": {
                **service,
                "command": ["sh", "-c", REST],
                "depends_on": {"db": {"condition": "service_started", "restart": True}},
            },
            "worker": {
                **service,
                "command": ["sh", "-c", REST],
                "depends_on": {"app": {"condition": "service_started", "restart": True}},
            },
        }
    }
    (scratch / "compose.yaml").write_text(yaml.safe_dump(spec))
    base = [binary, "-p", project, "-f", str(scratch / "compose.yaml")]
    subprocess.run([*base, "up", "-d", "--wait"], check=True, capture_output=True)

    def containers() -> dict[str, Any]:
        found = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        return {c.labels["com.docker.compose.service"]: c for c in found}

    def kill(container: Any) -> None:
        os.kill(container.attrs["State"]["Pid"], 9)

    def restart() -> None:
        subprocess.run([*base, "restart", "db"], check=True, capture_output=True)

    def down() -> None:
        subprocess.run([*base, "down", "-t", "1"], check=False, capture_output=True)

    return Side("compose", containers, kill, restart), down


def dockyard_side(world: World, client: docker.DockerClient) -> Side:
    containers = [
        {
            "name": "db",
            "image": IMAGE,
            "command": ["sh", "-c", DB],
            "healthCheck": {
                "exec": {"command": ["test", "-f", "/tmp/ok"]},
                "interval": "1s",
                "retries": 1,
            },
            "stopGracePeriod": "2s",
        },
        {"name": "app", "image": IMAGE, "command": ["sh", "-c", REST], "dependsOn": ["db"]},
        {"name": "worker", "image": IMAGE, "command": ["sh", "-c", REST], "dependsOn": ["app"]},
    ]
    manifest = job_manifest("peer", world.root, {"name": "graph", "containers": containers})
    kubectl("apply", "-n", world.namespace, "-f", "-", stdin=manifest)
    wait_until(lambda: ready(get("dyj", "peer-graph", world.namespace)), 180, "Dockyard ready")
    (vm,) = world.provider.find_vms({"deployment": "peer"})
    engine = world.provider.docker_client(vm.id)

    def found() -> dict[str, Any]:
        return {c.labels["dockyard.dev/container"]: c for c in engine.containers.list()}

    def kill(container: Any) -> None:
        pid = container.attrs["State"]["Pid"]
        client.containers.get(vm.id).exec_run(["kill", "-9", str(pid)])

    def restart() -> None:
        moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
        kubectl(
            "annotate", "--overwrite", "dyj", "peer-graph", "-n", world.namespace,
            f"dockyard.dev/restartedAt={moment}",
        )  # fmt: skip

    return Side("dockyard", found, kill, restart)


def settled(side: Side) -> bool:
    """Every container running and healthy (what a new round starts from)."""
    containers = side.containers()
    if set(containers) != set(NAMES):
        return False
    for c in containers.values():
        c.reload()
    db = containers["db"].attrs["State"]
    return all(c.status == "running" for c in containers.values()) and (
        (db.get("Health") or {}).get("Status") == "healthy"
    )


def _up_for(side: Side, seconds: float) -> bool:
    return all(time.time() - started(c) >= seconds for c in side.containers().values())


def scenarios(side: Side, settle: float) -> dict[str, Callable[[], dict[str, float | None]]]:
    def crash() -> dict[str, float | None]:
        return side.measure(lambda: side.kill(side.containers()["db"]), settle)

    def restart() -> dict[str, float | None]:
        return side.measure(side.restart, settle)

    def unhealthy() -> dict[str, float | None]:
        db = side.containers()["db"]
        sample = side.measure(lambda: db.exec_run(["rm", "-f", "/tmp/ok"]), settle)
        side.containers()["db"].exec_run(["touch", "/tmp/ok"])  # heal what was left unhealthy
        return sample

    return {"upstream_crash": crash, "explicit_restart": restart, "upstream_unhealthy": unhealthy}


def run(rounds: int, settle: float) -> dict[str, Any]:
    client = docker.from_env()
    results: dict[str, dict[str, list[dict[str, float | None]]]] = {}
    with bench_world("peer") as world:
        compose, down = compose_side(world.scratch, client)
        try:
            sides = [dockyard_side(world, client), compose]
            for name in ("upstream_crash", "explicit_restart", "upstream_unhealthy"):
                for number in range(rounds):
                    for side in sides if number % 2 == 0 else reversed(sides):
                        wait_until(lambda s=side: settled(s), 60, f"{side.name} settled", 0.2)  # type: ignore[misc]
                        # Docker delays the restart of a container that ran less than 10 s:
                        # both sides start from its first-failure regime.
                        wait_until(lambda s=side: _up_for(s, 11.0), 30, "11 s of uptime", 0.2)  # type: ignore[misc]
                        sample = scenarios(side, settle)[name]()
                        log(f"{name} {side.name}: {sample}")
                        results.setdefault(name, {}).setdefault(side.name, []).append(sample)
        finally:
            down()
    return {
        "rounds": rounds,
        "settle_seconds": settle,
        "scenarios": {
            name: {side: _report(samples) for side, samples in by_side.items()}
            for name, by_side in results.items()
        },
        "machine": machine_facts(),
    }


def _report(samples: list[dict[str, float | None]]) -> dict[str, Any]:
    alls = [s["all"] for s in samples if s["all"] is not None]
    return {
        "db_back_seconds": summary(backs)
        if (backs := [s["back"] for s in samples if s["back"] is not None])
        else None,
        "db_restarted": f"{len(backs)} of {len(samples)}",
        "all_restarted_seconds": summary(alls) if alls else None,
        "dependents_restarted": f"{len(alls)} of {len(samples)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.settle), indent=2))


if __name__ == "__main__":
    main()
