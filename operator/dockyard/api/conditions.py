"""Status conditions, kstatus style: ``Ready``, ``Reconciling`` and ``Stalled``.

- Ready=True: the world matches the spec of ``observedGeneration``.
- Reconciling=True: the operator is working towards the spec (it will get there by itself).
- Stalled=True: it cannot get there without a change from someone (bad spec, cycle, quota...).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field

from dockyard.api.schema import ApiModel

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

Status = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """An observation of one aspect of the object (kstatus: Ready, Reconciling, Stalled)."""

    type: Annotated[str, Field(max_length=316, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")]
    """Condition type: Ready, Reconciling or Stalled."""
    status: Status
    """True, False or Unknown."""
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """Machine-readable reason in CamelCase."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: datetime
    """When status last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation the condition was computed from."""


def _status(value: bool | Status) -> Status:
    if isinstance(value, bool):
        return "True" if value else "False"
    return value


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((condition for condition in conditions if condition.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: bool | Status,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """A new condition list with ``type_`` set; lastTransitionTime moves only when status does.

    The input is not modified, so callers can compare old and new and skip no-op status writes.
    """
    new_status = _status(status)
    old = get_condition(conditions, type_)
    if old is not None and old.status == new_status:
        transition = old.last_transition_time
    else:
        transition = (now or datetime.now(UTC)).replace(microsecond=0)
    updated = Condition(
        type=type_,
        status=new_status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    result = [condition for condition in conditions if condition.type != type_]
    result.append(updated)
    return sorted(result, key=lambda condition: condition.type)


def set_kstatus(
    conditions: Sequence[Condition],
    *,
    ready: bool,
    reason: str,
    message: str = "",
    stalled: bool = False,
    generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """Set Ready, Reconciling and Stalled together, consistently.

    ready -> Ready=True, Reconciling=False, Stalled=False; stalled -> Ready=False, Stalled=True,
    Reconciling=False; otherwise Ready=False, Reconciling=True. ``reason`` and ``message`` go on
    the condition that is True (and on Ready).
    """
    reconciling = not ready and not stalled
    result = set_condition(
        conditions, READY, ready, reason, message, generation=generation, now=now
    )
    for type_, value in ((RECONCILING, reconciling), (STALLED, stalled and not ready)):
        result = set_condition(
            result,
            type_,
            value,
            reason if value else ("Ready" if ready else reason),
            message if value else "",
            generation=generation,
            now=now,
        )
    return result
