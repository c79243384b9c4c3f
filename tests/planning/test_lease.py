"""The leader lease's decisions: who may take it, and when the holder must stop acting."""

from __future__ import annotations

import pytest

from dockyard.planning.lease import LeaseRecord, LeaseTimings, holds, may_take, seen

T = LeaseTimings(duration=6, renew_deadline=4, renew_every=2, retry_every=1)
HELD = LeaseRecord("a", "1")


def test_nobody_holding_it_or_holding_it_ourselves_means_take_it() -> None:
    assert may_take(seen(None, None, 0), "b", 0, T)
    assert may_take(seen(None, LeaseRecord("", "3"), 0), "b", 0, T)
    assert may_take(seen(None, LeaseRecord("b", "3"), 0), "b", 0, T)


def test_a_standby_waits_until_it_has_seen_the_lease_unchanged_for_its_duration() -> None:
    sighting = seen(None, HELD, 100)
    assert not may_take(sighting, "b", 105.9, T)
    renewed = seen(sighting, LeaseRecord("a", "2"), 105.9)  # the holder renewed: start again
    assert not may_take(renewed, "b", 110, T)
    assert may_take(seen(renewed, LeaseRecord("a", "2"), 112), "b", 112, T)


def test_the_holder_stops_acting_before_any_standby_may_take_over() -> None:
    renewed_at = 50.0  # the standby sees that write at 50 or later: it may take at 56 or later
    assert holds(renewed_at, 53.9, T)
    assert not holds(renewed_at, 54.0, T)
    assert not holds(None, 0, T)
    assert T.renew_deadline < T.duration


@pytest.mark.parametrize(("duration", "deadline", "every"), [(6, 6, 2), (6, 4, 4), (6, 4, 0)])
def test_timings_that_would_let_two_act_at_once_are_refused(
    duration: float, deadline: float, every: float
) -> None:
    with pytest.raises(ValueError, match="renew_every < renew_deadline < duration"):
        LeaseTimings(duration, deadline, every)
