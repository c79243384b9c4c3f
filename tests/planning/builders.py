"""Short ways to write desired and observed worlds in tests."""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.planning import (
    Action,
    ContainerAction,
    DesiredContainer,
    DesiredDisk,
    DesiredJob,
    ObservedContainer,
    ObservedDisk,
    ObservedInstance,
    ObservedVM,
    RestartPolicy,
    UpdatePolicy,
)


def c(
    name: str,
    *depends_on: str,
    hash: str = "h1",
    restart: RestartPolicy = "Always",
    disk: bool = False,
) -> DesiredContainer:
    return DesiredContainer(name, hash, tuple(depends_on), restart, uses_disk=disk)


def job(
    name: str,
    *containers: DesiredContainer,
    instances: int = 1,
    disk: DesiredDisk | None = None,
    canaries: int = 1,
    max_in_flight: int = 1,
    serial: bool = True,
    resurrect: bool = True,
) -> DesiredJob:
    return DesiredJob(
        name,
        instances,
        tuple(containers),
        disk,
        UpdatePolicy(canaries, max_in_flight, serial),
        resurrect,
    )


def running(at: float, hash: str = "h1") -> ObservedContainer:
    return ObservedContainer("running", hash, at)


def exited(at: float, code: int, hash: str = "h1") -> ObservedContainer:
    return ObservedContainer("exited", hash, at, code)


def instance(
    vm: str | None,
    containers: dict[str, ObservedContainer] | None = None,
    *,
    healthy: bool = True,
    disk: ObservedDisk | None = None,
) -> ObservedInstance:
    return ObservedInstance(
        ObservedVM(vm, healthy) if vm is not None else None, disk, dict(containers or {})
    )


def converged(desired: DesiredJob, at: float = 10.0) -> dict[int, ObservedInstance]:
    """Every instance of ``desired`` up, containers started in declaration order from ``at``
    (callers declare upstreams first)."""
    world: dict[int, ObservedInstance] = {}
    for index in range(desired.instances):
        containers = {
            spec.name: running(at + n, spec.config_hash)
            for n, spec in enumerate(desired.containers)
        }
        disk = (
            ObservedDisk(
                f"d-{desired.name}-{index}", desired.disk.size_mib, f"vm-{desired.name}-{index}"
            )
            if desired.disk
            else None
        )
        world[index] = instance(f"vm-{desired.name}-{index}", containers, disk=disk)
    return world


def brief(actions: Sequence[Action]) -> list[str]:
    """``Kind job/index[ container]`` per action: what tests compare."""
    out = []
    for action in actions:
        target = f" {action.container}" if isinstance(action, ContainerAction) else ""
        out.append(f"{action.kind} {action.job}/{action.index}{target}")
    return out
