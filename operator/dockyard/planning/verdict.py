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
    }
)


@dataclass(frozen=True)
class UpstreamState:
    """A container of another job, as its own Job last reported it: its latest start over its
    instances, and whether it is settled (nothing of it (re)starts now or is about to)."""

    latest_start: float | None
    settled: bool = True


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

    @property
    def stalled(self) -> bool:
        return self.phase.stalled
