"""Status conditions, kstatus style: ``Ready``, ``Reconciling`` and ``Stalled``.

- Ready=True: the world matches the spec of ``observedGeneration``.
- Reconciling=True: the operator is working towards the spec (it will get there by itself).
- Stalled=True: it cannot get there without a change from someone (bad spec, cycle, quota...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

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


def condition(
    previous: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """One condition as stored in ``status.conditions`` (a :class:`Condition`'s wire form);
    lastTransitionTime is kept from ``previous`` unless the status flips, so an unchanged world
    writes an unchanged status."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else None
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "observedGeneration": generation,
    }


def kstatus(
    previous: Sequence[Mapping[str, Any]],
    *,
    ready: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
    stalled_reason: str = "",
    stalled_message: str = "",
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled, consistent with each other: Ready carries ``reason`` and
    ``message``; Stalled is True when ``stalled_message`` says why; otherwise, when not ready,
    Reconciling is True (reason ``Progressing`` for a plain ``Reconciling``, else ``reason``)."""
    stalled = bool(stalled_message)
    if ready:
        reconciling_reason = "Converged"
    elif stalled:
        reconciling_reason = "Stalled"
    else:
        reconciling_reason = "Progressing" if reason == "Reconciling" else reason
    return [
        condition(previous, READY, ready, reason, message, generation, now),
        condition(
            previous,
            RECONCILING,
            not ready and not stalled,
            reconciling_reason,
            "" if ready or stalled else message,
            generation,
            now,
        ),
        condition(
            previous,
            STALLED,
            stalled,
            stalled_reason if stalled else "Converged",
            stalled_message,
            generation,
            now,
        ),
    ]
