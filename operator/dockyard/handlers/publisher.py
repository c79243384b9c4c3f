"""A Job's status and disk records reach the API from here, off the path of the actions.

The daemon computes the status of every report at once (cheap, and restart counts need every
one) and offers it; this task writes the latest offer when it differs from what was written,
coalescing offers made meanwhile. When the API does not answer, it tries again with a back-off
and the daemon goes on repairing: nothing waits for the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Write = Callable[[dict[str, Any]], Awaitable[None]]
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


class Publisher:
    """Writes the latest of what it is offered with ``write``; never the same thing twice."""

    def __init__(self, write: Write, name: str, written: dict[str, Any] | None = None) -> None:
        self._write = write
        self._name = name
        self._written = written
        self._latest: dict[str, Any] | None = None
        self._offered = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name=f"publish-{name}")

    def offer(self, value: dict[str, Any]) -> None:
        if value == self._written and self._latest is None:
            return
        self._latest = value
        self._idle.clear()
        self._offered.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until the latest offer is written (or ``timeout``): True when it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._idle.is_set()

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            await self._offered.wait()
            self._offered.clear()
            value = self._latest
            if value is None:
                continue
            if value != self._written:
                try:
                    await self._write(value)
                except Exception as error:  # the API is away or refused: the daemon goes on
                    log.warning(
                        "writing %s failed (tried again in %.1fs): %s", self._name, delay, error
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    if self._latest is None:
                        self._latest = value
                    self._offered.set()
                    continue
                self._written = value
            delay = RETRY_FIRST
            if self._latest is value:
                self._latest = None
                self._idle.set()

    def close(self) -> None:
        """Stop at once (a daemon must exit instantly when kopf cancels it): what was not
        written yet is written by the next pass or the next operator."""
        self._task.cancel()
