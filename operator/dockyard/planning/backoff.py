"""Back-off: how long something that keeps failing waits before it is tried again.

One small immutable value instead of ``(count, since, what)`` tuples: the kubelet's shape (10 s
doubling to 5 min), forgotten after it succeeds or, for health restarts, after 10 min healthy.
Time is whatever clock the caller passes (monotonic seconds): tests pass a fake one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: Failed starts, failed disk actions and restarts for failing health checks: 10 s doubling to
#: 5 min, as the kubelet's CrashLoopBackOff and Docker's own restart policy (from 100 ms).
FIRST_DELAY = 10.0
MAX_DELAY = 300.0
#: A container restarted for its health check that stays healthy this long starts afresh.
HEALTHY_RESET = 600.0


@dataclass(frozen=True)
class Backoff:
    """``failures`` in a row, the last at ``last`` (caller's clock)."""

    failures: int = 0
    last: float = 0.0
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    at_least: float = 0.0  # the last failure asked for this much (an IaaS's retry-after)

    @property
    def delay(self) -> float:
        """The wait after the last failure: 0 before any, then doubling up to ``max_delay``."""
        if self.failures == 0:
            return 0.0
        doubled = min(self.first_delay * 2.0 ** (self.failures - 1), self.max_delay)
        return max(doubled, self.at_least)

    def remaining(self, now: float) -> float:
        """Seconds until it may be tried again (0: now)."""
        return max(self.delay - (now - self.last), 0.0)

    def waiting(self, now: float) -> bool:
        return self.remaining(now) > 0

    def failed(self, now: float, at_least: float = 0.0) -> Backoff:
        """One more failure, at ``now``; wait at least ``at_least`` after it."""
        return replace(self, failures=self.failures + 1, last=now, at_least=at_least)
