"""Properties over random deployments and random worlds: a plan, executed, converges; planning
again finds nothing; dependents (re)start after their upstreams; data is never lost; stepping
through plans batch by batch converges too."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.planning import (
    STARTS,
    Action,
    ContainerAction,
    ContainerKey,
    CreateDisk,
    DeleteDisk,
    DesiredContainer,
    DesiredDisk,
    DesiredJob,
    MigrateDisk,
    ObservedContainer,
    ObservedDisk,
    ObservedInstance,
    ObservedVM,
    RestartContainer,
    UpdatePolicy,
    World,
    build_graph,
    next_step,
    plan,
)
from tests.planning.simulator import Simulator

HASHES = ("h1", "h2")
STATES = ("running", "running", "restarting", "paused", "created", "exited", "dead")


@st.composite
def deployments(draw: st.DrawFn) -> list[DesiredJob]:
    """1-3 jobs of 1-4 containers; dependencies (same job and cross-job) follow a hidden random
    order, so the graph is a DAG whose declaration order is not a topological one."""
    names = [f"j{n}" for n in range(draw(st.integers(1, 3)))]
    keys = [ContainerKey(job, f"c{n}") for job in names for n in range(draw(st.integers(1, 4)))]
    hidden = draw(st.permutations(keys))
    jobs = []
    for name in names:
        containers = []
        for key in (k for k in keys if k.job == name):
            earlier = hidden[: hidden.index(key)]
            ups = (
                draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if earlier else []
            )
            refs = tuple(u.container if u.job == name else str(u) for u in ups)
            containers.append(
                DesiredContainer(
                    key.container,
                    draw(st.sampled_from(HASHES)),
                    refs,
                    draw(st.sampled_from(["Always", "OnFailure", "Never"])),
                    uses_disk=draw(st.booleans()),
                )
            )
        disk = draw(
            st.none()
            | st.builds(
                DesiredDisk,
                st.sampled_from([100, 200, 300]),
                st.none(),
                st.sampled_from(["Retain", "Delete"]),
            )
        )
        policy = UpdatePolicy(draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.booleans()))
        jobs.append(
            DesiredJob(
                name, draw(st.integers(0, 4)), tuple(containers), disk, policy, draw(st.booleans())
            )
        )
    return jobs


@st.composite
def worlds(draw: st.DrawFn, desired: Sequence[DesiredJob]) -> World:
    """A converged world, then broken the ways a crash, a spec change or a sloppy human leave it:
    missing, unhealthy and extra VMs, disks missing, small, detached or attached elsewhere,
    containers outdated, down, unknown, restarted by the engine at any time."""
    ids = iter(range(10_000))
    order = {key: n for n, key in enumerate(build_graph(desired).topological_order())}
    world: dict[str, dict[int, ObservedInstance]] = {}
    for job in desired:
        instances: dict[int, ObservedInstance] = {}
        for index in range(job.instances + draw(st.integers(0, 2))):
            mode = draw(st.sampled_from(["ok", "ok", "ok", "no-vm", "unhealthy", "absent"]))
            if mode == "absent":
                continue
            vm = None if mode == "no-vm" else ObservedVM(f"vm{next(ids)}", mode == "ok")
            disk = _disk(draw, job.disk, vm, f"disk{next(ids)}")
            containers: dict[str, ObservedContainer] = {}
            for spec in job.containers if vm is not None else ():
                found = _container(draw, spec, 10.0 + order[ContainerKey(job.name, spec.name)])
                if found is not None:
                    containers[spec.name] = found
            if vm is not None and draw(st.integers(0, 9)) == 0:
                containers["extra"] = ObservedContainer("running", "h1", 5.0)
            instances[index] = ObservedInstance(vm, disk, containers)
        world[job.name] = instances
    if draw(st.booleans()):
        vm = ObservedVM("vm-gone", draw(st.booleans()))
        disk = ObservedDisk(
            "disk-gone",
            100,
            draw(st.sampled_from([None, "vm-gone"])),
            draw(st.sampled_from([None, "Retain", "Delete"])),
            migration_target=draw(st.sampled_from([None, "disk-gone-new"])),
        )
        world["gone"] = {
            0: ObservedInstance(vm, disk, {"old": ObservedContainer("running", "h1", 1.0)})
        }
    return world


def _disk(
    draw: st.DrawFn, wanted: DesiredDisk | None, vm: ObservedVM | None, disk_id: str
) -> ObservedDisk | None:
    here = vm.id if vm is not None else None
    if wanted is None:
        return ObservedDisk(disk_id, 100, here) if draw(st.integers(0, 4)) == 0 else None
    mode = draw(st.sampled_from(["ok", "ok", "small", "big", "detached", "elsewhere", "none"]))
    if mode == "none":
        return None
    size = {"small": wanted.size_mib // 2, "big": wanted.size_mib * 2}.get(mode, wanted.size_mib)
    attached = {"detached": None, "elsewhere": "vm-elsewhere"}.get(mode, here)
    policy = draw(st.sampled_from([None, "Retain", "Delete"]))
    in_place = draw(st.booleans())  # False: the provider grows it by copy-migration
    # An unfinished migration's new disk: only where copies happen.
    target = None if in_place else draw(st.sampled_from([None, f"{disk_id}-new"]))
    waits = draw(st.integers(0, 4)) == 0  # a grow that failed lately backs off
    return ObservedDisk(disk_id, size, attached, policy, in_place, target, waits)


def _container(draw: st.DrawFn, spec: DesiredContainer, started: float) -> ObservedContainer | None:
    mode = draw(
        st.sampled_from(
            ["ok"] * 6
            + ["old", "exited", "dead", "restarting", "paused", "created", "missing", "bumped"]
        )
    )
    if mode == "missing":
        return None
    other = "h2" if spec.config_hash == "h1" else "h1"
    state = {
        "exited": "exited",
        "dead": "dead",
        "restarting": "restarting",
        "paused": "paused",
        "created": "created",
    }.get(mode, "running")
    return ObservedContainer(
        state,  # type: ignore[arg-type]
        other if mode == "old" else spec.config_hash,
        draw(st.floats(0, 200).map(round))
        if mode == "bumped"
        else (None if mode == "created" else started),
        draw(st.sampled_from([0, 1, 137])) if state in ("exited", "dead") else None,
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[DesiredJob], World, bool]:
    desired = draw(deployments())
    return desired, draw(worlds(desired)), draw(st.booleans())


def wanted(desired: Sequence[DesiredJob], job: str, index: int) -> bool:
    return any(j.name == job and index < j.instances for j in desired)


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(scenarios())
def test_a_plan_executed_converges_and_the_next_plan_is_empty(
    scenario: tuple[list[DesiredJob], World, bool],
) -> None:
    desired, world, detach = scenario
    actions = plan(desired, world, detach_to_resize=detach)
    assert plan(desired, world, detach_to_resize=detach) == actions  # deterministic
    after = Simulator(desired, detach_to_resize=detach).apply(actions, world)
    assert plan(desired, after, detach_to_resize=detach) == []
    assert_dependents_started_after_upstreams(desired, after)


def assert_dependents_started_after_upstreams(desired: Sequence[DesiredJob], world: World) -> None:
    """The documented rule, checked on a converged world: every running container started after
    its upstreams' latest start (same instance, or any instance of another job)."""
    graph = build_graph(desired)
    starts: dict[tuple[ContainerKey, int], float] = {}
    for job in desired:
        for index, found in world.get(job.name, {}).items():
            if index >= job.instances or found.vm is None or not found.vm.healthy:
                continue
            for name, container in found.containers.items():
                if container.started_at is not None:
                    starts[(ContainerKey(job.name, name), index)] = container.started_at
    for job in desired:
        for index, found in world.get(job.name, {}).items():
            if index >= job.instances or found.vm is None or not found.vm.healthy:
                continue
            for spec in job.containers:
                mine = found.containers.get(spec.name)
                if mine is None or mine.state not in ("running", "restarting"):
                    continue
                if mine.started_at is None:
                    continue
                key = ContainerKey(job.name, spec.name)
                for upstream in graph.upstreams_of(key):
                    theirs = [
                        at
                        for (other, i), at in starts.items()
                        if other == upstream and (i == index or upstream.job != job.name)
                    ]
                    assert all(at <= mine.started_at for at in theirs), (
                        f"{key} on {index} started at {mine.started_at}, {upstream} at {theirs}"
                    )


@FAST
@given(scenarios())
def test_dependents_start_after_their_upstreams_each_once(
    scenario: tuple[list[DesiredJob], World, bool],
) -> None:
    desired, world, detach = scenario
    actions = plan(desired, world, detach_to_resize=detach)
    graph = build_graph(desired)
    started: dict[tuple[ContainerKey, int], int] = {}
    for position, action in enumerate(actions):
        if not isinstance(action, STARTS):
            continue
        assert (action.key, action.index) not in started, f"{action} twice"
        started[(action.key, action.index)] = position
        for upstream in graph.upstreams_of(action.key):
            same_job = upstream.job == action.job
            later = [
                str(other)
                for other in actions[position + 1 :]
                if isinstance(other, STARTS)
                and other.key == upstream
                and (other.index == action.index or not same_job)
            ]
            assert not later, f"{action} comes before its upstream's {later}"
        if isinstance(action, RestartContainer):
            assert action.because_of in graph.upstreams_of(action.key)
    # Only containers of the spec are started, only on wanted instances.
    for action in actions:
        if isinstance(action, STARTS):
            assert wanted(desired, action.job, action.index)


@FAST
@given(scenarios())
def test_no_data_is_lost(scenario: tuple[list[DesiredJob], World, bool]) -> None:
    desired, world, detach = scenario
    actions = plan(desired, world, detach_to_resize=detach)
    copied = {(a.job, a.index): a.disk_id for a in actions if isinstance(a, MigrateDisk)}
    for action in actions:
        observed = world.get(action.job, {}).get(action.index)
        if isinstance(action, DeleteDisk):
            unfinished = observed is not None and observed.disk is not None
            unfinished = unfinished and action.disk_id == observed.disk.migration_target
            assert unfinished or not wanted(desired, action.job, action.index)
        if isinstance(action, CreateDisk):
            assert observed is None or observed.disk is None, f"{action} replaces a disk"
    after = Simulator(desired, detach_to_resize=detach).apply(actions, world)
    for job in desired:
        for index, before in world.get(job.name, {}).items():
            if index < job.instances and before.disk is not None:
                kept = after[job.name][index].disk
                assert kept is not None
                # Same disk, or a copy of it (the simulator checks the copy's preconditions).
                assert kept.id == before.disk.id or copied.get((job.name, index)) == before.disk.id
                assert kept.size_mib >= before.disk.size_mib


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_stepping_batch_by_batch_converges(scenario: tuple[list[DesiredJob], World, bool]) -> None:
    desired, world, detach = scenario
    simulator = Simulator(desired, detach_to_resize=detach)
    history: list[Sequence[Action]] = []
    for _ in range(60):
        actions = plan(desired, world, detach_to_resize=detach)
        step = next_step(actions, desired)
        assert step.done == (not actions)
        if step.done:
            assert_dependents_started_after_upstreams(desired, world)
            return
        assert set(step.actions) <= set(actions)
        history.append(step.actions)
        world = simulator.apply(step.actions, world)
    raise AssertionError(f"no convergence: {[[str(a) for a in s] for s in history[-6:]]}")


@FAST
@given(deployments())
def test_a_fresh_deploy_starts_each_container_once_per_instance(desired: list[DesiredJob]) -> None:
    actions = plan(desired, {})
    assert sorted(str(a) for a in actions if isinstance(a, ContainerAction)) == sorted(
        f"StartContainer {job.name}/{index} {c.name}: new VM"
        for job in desired
        for index in range(job.instances)
        for c in job.containers
    )
    assert sum(a.kind == "CreateVM" for a in actions) == sum(job.instances for job in desired)
