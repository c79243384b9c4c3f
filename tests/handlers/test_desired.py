"""From a container of the API to what the runtime runs."""

from __future__ import annotations

import pytest

from dockyard.api.containers import Container
from dockyard.handlers.desired import container_want


@pytest.mark.parametrize(("grace", "seconds"), [(None, None), ("0s", 0), ("500ms", 1), ("30s", 30)])
def test_stop_grace_period_is_whole_seconds_rounded_up_and_zero_means_at_once(
    grace: str | None, seconds: int | None
) -> None:
    container = Container(name="a", image="busybox", stop_grace_period=grace)
    assert container_want(container, "spec.containers[0]", {}).config.stop_timeout == seconds
