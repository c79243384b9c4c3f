"""dependsOn conditions in the decision step: Healthy and Completed, same job and across jobs,
in repairs and through a watched rollout."""

from __future__ import annotations

from dataclasses import replace

from dockyard.planning import ContainerKey, DesiredContainer, DesiredJob
from dockyard.planning.decide import Hold, JobIntent, decide
from dockyard.planning.memory import JobMemory, Outcome, record
from dockyard.planning.observation import (
    ContainerObservation,
    InstanceObservation,
    JobObservation,
    VMPhase,
)
from dockyard.planning.verdict import Completion, Phase, Readiness, UpstreamState
from tests.planning.builders import brief, job


def box(
    name: str,
    *waits: tuple[str, str],
    hash: str = "h1",
    checked: bool = False,
    restart: str = "Always",
) -> DesiredContainer:
    return DesiredContainer(
        name,
        hash,
        tuple(w[0] for w in waits),
        restart,
        waits_for=tuple(w for w in waits if w[1] != "Started"),
        checked=checked,  # type: ignore[arg-type]
    )


def seen(state: str, at: float = 10.0, hash: str = "h1", **extra: object) -> ContainerObservation:
    return ContainerObservation(f"id-{at}", state, hash, at, **extra)  # type: ignore[arg-type]


def world(**containers: ContainerObservation) -> JobObservation:
    return JobObservation({0: InstanceObservation("vm-0", VMPhase.RUNNING, True, None, containers)})


def intent(desired: DesiredJob, **changes: object) -> JobIntent:
    base = JobIntent(desired, generation=1, watch_time=(1.0, 30.0), canary_watch_time=(1.0, 30.0))
    return replace(base, **changes)  # type: ignore[arg-type]


WEB = job("web", box("db", checked=True), box("app", ("db", "Healthy")))


def test_a_dependent_waits_for_its_upstream_to_be_healthy_then_starts() -> None:
    first = decide(intent(WEB), world(), JobMemory(), now=0.0)
    assert brief(first.actions) == ["StartContainer web/0 db"]  # app waits
    assert {a.container: h for a, h in first.held.items()} == {"app": Hold.CONDITION}

    starting = decide(intent(WEB), world(db=seen("running", health="starting")), first.memory, 1.0)
    assert starting.actions == () and starting.verdict.phase is Phase.RECONCILING
    assert "container app waits for web/db to be healthy" in starting.verdict.message
    assert not starting.verdict.converged

    healthy = decide(intent(WEB), world(db=seen("running", health="healthy")), starting.memory, 2.0)
    assert brief(healthy.actions) == ["StartContainer web/0 app"]


MIGRATE = job(
    "web",
    box("migrate", restart="Never"),
    box("app", ("migrate", "Completed")),
    box("worker", ("app", "Started")),
)


def test_a_migration_that_completes_lets_the_app_start_and_what_follows_it() -> None:
    running = decide(intent(MIGRATE), world(migrate=seen("running")), JobMemory(), 0.0)
    assert running.actions == ()
    assert {a.container for a in running.held} == {"app", "worker"}  # worker is behind app
    done = decide(intent(MIGRATE), world(migrate=seen("exited", exit_code=0)), running.memory, 1.0)
    assert brief(done.actions) == ["StartContainer web/0 app", "StartContainer web/0 worker"]


def test_a_failed_migration_blocks_the_app_and_the_job_says_which() -> None:
    failed = decide(intent(MIGRATE), world(migrate=seen("exited", exit_code=1)), JobMemory(), 0.0)
    assert failed.actions == ()
    assert failed.verdict.phase is Phase.UPSTREAM_FAILED and failed.verdict.stalled
    assert (
        "container app waits for web/migrate to complete, but it failed" in failed.verdict.message
    )


def test_across_jobs_the_upstream_job_reports_its_readiness() -> None:
    front = job("front", box("web", ("back/api", "Healthy")))
    key = ContainerKey("back", "api")
    sick = {key: UpstreamState(5.0, True, Readiness(healthy=False))}
    held = decide(intent(front, upstreams=sick), world(), JobMemory(), 0.0)
    assert held.actions == () and "waits for back/api to be healthy" in held.verdict.message
    well = {key: UpstreamState(5.0, True, Readiness(healthy=True, completion=Completion.PENDING))}
    assert brief(decide(intent(front, upstreams=well), world(), JobMemory(), 0.0).actions) == [
        "StartContainer front/0 web"
    ]


def test_a_job_reports_each_containers_readiness_for_its_dependents() -> None:
    observed = world(db=seen("running", health="healthy"), app=seen("running", 11.0))
    verdict = decide(intent(WEB), observed, JobMemory(), 0.0).verdict
    assert verdict.readiness[ContainerKey("web", "db")] == Readiness(True, Completion.PENDING)
    done = decide(intent(MIGRATE), world(migrate=seen("exited", exit_code=0)), JobMemory(), 0.0)
    assert done.verdict.readiness[ContainerKey("web", "migrate")].completion is Completion.DONE


def test_a_rollout_finishes_its_batch_once_the_upstream_is_healthy() -> None:
    new = job("web", box("db", hash="h2", checked=True), box("app", ("db", "Healthy"), hash="h2"))
    old = world(db=seen("running", health="healthy"), app=seen("running", 11.0))
    first = decide(intent(new, generation=2), old, JobMemory(), 0.0)
    assert brief(first.actions) == ["RecreateContainer web/0 db"]  # app waits for it
    assert first.rollout is not None
    memory = record(first.memory, new, [Outcome(a) for a in first.actions], first.rollout, 1.0)
    recreated = world(db=seen("running", 12.0, "h2", health="healthy"), app=seen("running", 11.0))
    watched = decide(intent(new, generation=2), recreated, memory, 2.0)
    assert brief(watched.actions) == ["RecreateContainer web/0 app"], watched.held
