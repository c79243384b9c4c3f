"""A Job's status from a pass's report, and what the next pass reads back from it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dockyard.api.models import Job
from dockyard.handlers.desired import known_vms
from dockyard.handlers.status import job_status
from dockyard.planning import InstanceCommands
from dockyard.planning.observation import InstanceObservation, JobObservation, VMPhase
from dockyard.planning.verdict import Phase, Verdict
from dockyard.runtime.reconciler import JobReport

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def job_with(status: dict[str, Any]) -> Job:
    return Job.model_validate(
        {
            "metadata": {"name": "shop-db", "namespace": "ns", "generation": 1},
            "spec": {
                "name": "db",
                "instances": 2,
                "provider": {"type": "local"},
                "containers": [{"name": "db", "image": "busybox"}],
            },
            "status": status,
        }
    )


def report(*instances: InstanceObservation, commands: InstanceCommands | None = None) -> JobReport:
    return JobReport(
        observation=JobObservation(dict(enumerate(instances))),
        verdict=Verdict(Phase.RECONCILING, "resurrecting", ready_instances=1),
        acting=True,
        commands=commands or InstanceCommands(),
    )


RUNNING = InstanceObservation("vm-1", VMPhase.RUNNING, engine_ok=True)
WAS_HERE = {"instances": [{"index": 0, "vmId": "vm-0"}, {"index": 1, "vmId": "vm-1"}]}


def test_a_vm_gone_from_the_iaas_is_remembered_until_replaced_so_the_next_pass_resurrects_it() -> (
    None
):
    job = job_with(WAS_HERE)
    status = job_status(job, report(InstanceObservation(), RUNNING), NOW)
    gone = status["instances"][0]
    assert (gone["state"], gone["vmId"]) == ("missing", "vm-0")
    assert status["replicas"] == 1  # only VMs that exist count
    # The next pass (its clean-up of vm-0 may have failed) still knows which VM went.
    assert known_vms(job_with(status)) == {0: "vm-0", 1: "vm-1"}
    replaced = job_status(
        job_with(status),
        report(InstanceObservation("vm-2", VMPhase.RUNNING, engine_ok=True), RUNNING),
        NOW,
    )
    assert known_vms(job_with(replaced)) == {0: "vm-2", 1: "vm-1"}
    assert replaced["replicas"] == 2


def test_a_vm_deleted_by_stop_hard_is_forgotten() -> None:
    detached = InstanceCommands(detached=frozenset({0}))
    status = job_status(
        job_with(WAS_HERE), report(InstanceObservation(), RUNNING, commands=detached), NOW
    )
    assert status["instances"][0]["state"] == "stopped-hard"
    assert "vmId" not in status["instances"][0]
    assert known_vms(job_with(status)) == {1: "vm-1"}
