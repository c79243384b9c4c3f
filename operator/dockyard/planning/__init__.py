"""Planning: pure functions from (desired, observed, memory, now) to what to do.

No I/O, no clock (time is passed in), no imports of the API models: the runtime adapts both
sides into small frozen dataclasses. Two steps:

* :func:`plan` (``planner``): desired x observed → every action, in order, each with a typed
  :class:`Cause`;
* ``decide.decide`` (``decide``): intent x observation x memory x now → the actions to run
  now (back-offs, meltdown, unresponsive timeouts, cross-job settling, the rollout's canaries,
  batches and watches), the new memory (``memory``), and the verdict for status (``verdict``).
  ``ordering.order`` turns the chosen actions into the graph the executor runs;
  ``cascade.upstream_states`` says when an upstream in another job is settled.

Inputs (``model``)
    :class:`DesiredJob` (name, instances, containers, disk, update, resurrect),
    :class:`DesiredContainer` (name, config_hash, depends_on, restart_policy, uses_disk),
    :class:`DesiredDisk` (size_mib, type, reclaim_policy), :class:`UpdatePolicy` (canaries,
    max_in_flight as a number, serial). The observed :data:`World` maps job -> index ->
    :class:`ObservedInstance` (vm: :class:`ObservedVM`, disk: :class:`ObservedDisk`,
    containers: name -> :class:`ObservedContainer` with state, config_hash, started_at).

Actions (frozen dataclasses; ``kind`` is the class name; all have ``job`` and ``index``)
    :class:`CreateVM`, :class:`DeleteVM`, :class:`CreateDisk` (creates and attaches),
    :class:`AttachDisk`, :class:`DetachDisk`, :class:`ResizeDisk`, :class:`MigrateDisk`,
    :class:`DeleteDisk`, :class:`OrphanDisk`, :class:`AdoptDisk`, :class:`SnapshotDisk`, and
    container actions (``container``, ``reason``): :class:`StartContainer`,
    :class:`RecreateContainer`, :class:`RestartContainer` (``because_of``: the upstream key),
    :class:`StopContainer`, :class:`RemoveContainer`.

Functions
    :func:`plan` — the whole ordered plan; its module doc states the ordering and the
    restart-after-upstream rule (``started_at`` comparisons, so re-planning is idempotent).
    :func:`next_step` — the slice of a plan to run now (removals, then canaries, then batches
    of ``max_in_flight``; ``serial`` jobs one after another).
    :func:`rollout_batches`, :func:`job_order`, :func:`job_stages` — the batching underneath;
    :func:`schedule` — the whole rollout as waves of (job, batch), for status and previews.
    :func:`build_graph` -> :class:`DependencyGraph` (``topological_order``, ``find_cycles``,
    ``dependents_of``, ``upstreams_of``) — usable on API job templates too (admission);
    :func:`external_upstreams` — the ``job/name`` keys a one-Job plan needs start times for.

Errors: :class:`PlanningError` (a ``ValueError`` with ``field``, e.g.
``jobs[backend].containers[api].dependsOn``) and its :class:`CycleError` (``cycle`` path).
"""

from dockyard.planning.graph import (
    CycleError,
    DependencyGraph,
    build_graph,
    external_upstreams,
    format_path,
    parse_dependency,
)
from dockyard.planning.model import (
    ROLLOUT_CAUSES,
    STARTS,
    Action,
    AdoptDisk,
    AttachDisk,
    Cause,
    ContainerAction,
    ContainerKey,
    ContainerState,
    CreateDisk,
    CreateVM,
    DeleteDisk,
    DeleteVM,
    DesiredContainer,
    DesiredDisk,
    DesiredJob,
    DetachDisk,
    InstanceCommands,
    InstanceRef,
    MigrateDisk,
    ObservedContainer,
    ObservedDisk,
    ObservedInstance,
    ObservedVM,
    OrphanDisk,
    PlanningError,
    ReclaimPolicy,
    RecreateContainer,
    RemoveContainer,
    ResizeDisk,
    RestartContainer,
    RestartPolicy,
    SnapshotDisk,
    StartContainer,
    StopContainer,
    UpdatePolicy,
    VMStrategy,
    World,
)
from dockyard.planning.planner import plan
from dockyard.planning.rollout import (
    Batch,
    Step,
    job_order,
    job_stages,
    next_step,
    rollout_batches,
    schedule,
)

__all__ = [
    "ROLLOUT_CAUSES",
    "STARTS",
    "Action",
    "AdoptDisk",
    "AttachDisk",
    "Batch",
    "Cause",
    "ContainerAction",
    "ContainerKey",
    "ContainerState",
    "CreateDisk",
    "CreateVM",
    "CycleError",
    "DeleteDisk",
    "DeleteVM",
    "DependencyGraph",
    "DesiredContainer",
    "DesiredDisk",
    "DesiredJob",
    "DetachDisk",
    "InstanceCommands",
    "InstanceRef",
    "MigrateDisk",
    "ObservedContainer",
    "ObservedDisk",
    "ObservedInstance",
    "ObservedVM",
    "OrphanDisk",
    "PlanningError",
    "ReclaimPolicy",
    "RecreateContainer",
    "RemoveContainer",
    "ResizeDisk",
    "RestartContainer",
    "RestartPolicy",
    "SnapshotDisk",
    "StartContainer",
    "Step",
    "StopContainer",
    "UpdatePolicy",
    "VMStrategy",
    "World",
    "build_graph",
    "external_upstreams",
    "format_path",
    "job_order",
    "job_stages",
    "next_step",
    "parse_dependency",
    "plan",
    "rollout_batches",
    "schedule",
]
