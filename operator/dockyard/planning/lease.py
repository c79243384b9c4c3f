"""Who is the active operator: the decisions of a leader lease, without I/O or real time.

Replicas share one Lease object. The holder renews it every ``renew_every`` seconds; another
replica takes it once it has seen the lease unchanged for ``duration`` seconds *by its own
clock* (as client-go does: no two machines' clocks are compared). The holder stops acting
(fences itself) ``renew_deadline`` seconds after its last successful renewal, which is sooner
than any other replica may take over, so two replicas never act at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LeaseTimings:
    duration: float = 6.0  # unchanged this long (seen by a standby): the holder is gone
    renew_deadline: float = 4.0  # the holder acts only this long after its last renewal
    renew_every: float = 2.0  # the holder renews this often (writes: 60 / renew_every a minute)
    retry_every: float = 1.0  # a standby looks this often

    def __post_init__(self) -> None:
        if not 0 < self.renew_every < self.renew_deadline < self.duration:
            raise ValueError(
                "lease timings: need 0 < renew_every < renew_deadline < duration, got "
                f"{self.renew_every}, {self.renew_deadline}, {self.duration}"
            )
        if self.retry_every <= 0:
            raise ValueError(f"lease timings: retry_every must be > 0, got {self.retry_every}")


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease as read: its holder and a version that changes with every write."""

    holder: str
    version: str


@dataclass(frozen=True)
class Sighting:
    """What a replica last saw of the lease, and when by its own clock."""

    record: LeaseRecord | None
    since: float


def seen(previous: Sighting | None, record: LeaseRecord | None, now: float) -> Sighting:
    """The sighting after reading ``record`` at ``now``: its time moves only when it changed."""
    if previous is not None and previous.record == record:
        return previous
    return Sighting(record, now)


def may_take(sighting: Sighting, me: str, now: float, timings: LeaseTimings) -> bool:
    """Whether ``me`` may write itself into the lease: no lease, a lease with no holder, its
    own, or one that has not changed for ``duration`` seconds."""
    record = sighting.record
    if record is None or not record.holder or record.holder == me:
        return True
    return now - sighting.since >= timings.duration


def holds(last_renewed: float | None, now: float, timings: LeaseTimings) -> bool:
    """Whether the holder may still act: it renewed less than ``renew_deadline`` ago."""
    return last_renewed is not None and now - last_renewed < timings.renew_deadline
