"""What a decision means for the Job's status: one phase (the Ready reason), whether it is
stalled (kstatus: it will not get there without a change from someone), and when to look again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from dockyard.planning.model import ContainerKey


class Phase(enum.StrEnum):
    """The Job's Ready reason. Code branches on these; the message is for people."""

    CONVERGED = "Converged"
    RECONCILING = "Reconciling"  # acting, or about to, or waiting for an upstream
    ROLLING_OUT = "RollingOut"  # a batch is updated or watched
    BACK_OFF = "BackOff"  # an action failed and waits before it is tried again
    CRASH_LOOP = "CrashLoopBackOff"  # the engine keeps restarting a container
    PAUSED = "Paused"  # an operator paused it: nothing is done
    # Stalled: it will not get better without a change from someone.
    INVALID_SPEC = "InvalidSpec"
    ROLLOUT_HALTED = "RolloutHalted"
    MELTDOWN = "Meltdown"
    RESURRECTION_DISABLED = "ResurrectionDisabled"
    REFUSED = "Refused"  # the engine or IaaS refuses an action, every time
    DISK_MISSING = "DiskMissing"  # a recorded disk is gone: restore it or accept the loss
    UPSTREAM_FAILED = "UpstreamFailed"  # an upstream a container waits to complete failed
    POLICY_VIOLATION = "PolicyViolation"  # the namespace's policy level refuses the spec

    @property
    def stalled(self) -> bool:
        return self in STALLED


STALLED = frozenset(
    {
        Phase.INVALID_SPEC,
        Phase.ROLLOUT_HALTED,
        Phase.MELTDOWN,
        Phase.RESURRECTION_DISABLED,
        Phase.REFUSED,
        Phase.DISK_MISSING,
        Phase.POLICY_VIOLATION,
        Phase.UPSTREAM_FAILED,
    }
)


class Completion(enum.StrEnum):
    """Whether a one-shot container did its work (a dependsOn condition Completed)."""

    DONE = "Done"  # exited 0
    FAILED = "Failed"  # exited non-zero, and its restart policy will not run it again
    PENDING = "Pending"  # not yet (running, restarting, never started)


@dataclass(frozen=True)
class Readiness:
    """A container of a job over every wanted instance of it, for its dependents' conditions:
    healthy everywhere, and whether it completed."""

    healthy: bool = False
    completion: Completion = Completion.PENDING


@dataclass(frozen=True)
class UpstreamState:
    """A container of another job, as its own Job last reported it: its latest start over its
    instances, whether it is settled (nothing of it (re)starts now or is about to), and its
    readiness (for dependsOn conditions)."""

    latest_start: float | None
    settled: bool = True
    readiness: Readiness = field(default_factory=Readiness)
    #: address:port of every instance of it (its dependents' links).
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    message: str
    ready_instances: int
    converged: bool = False
    #: When to look again (None: only when something changes, or at the drift interval).
    requeue_after: float | None = None
    #: This Job's containers that (re)start now or are about to: dependents wait for them.
    unsettled: frozenset[ContainerKey] = frozenset()
    #: Latest start of each of this Job's containers, over its instances.
    latest_starts: Mapping[ContainerKey, float | None] = field(default_factory=dict)
    #: Each of this Job's containers over its instances: healthy, completed (for dependents).
    readiness: Mapping[ContainerKey, Readiness] = field(default_factory=dict)
    #: Each of this Job's containers: where it is reached (its dependents' links).
    endpoints: Mapping[ContainerKey, tuple[str, ...]] = field(default_factory=dict)

    @property
    def stalled(self) -> bool:
        return self.phase.stalled
