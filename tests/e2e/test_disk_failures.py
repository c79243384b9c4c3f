"""A disk grow that keeps failing: the data stays where it was and the disk's users run on it,
the failure shows in Events, and it is retried with a back-off rather than every second."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import Kubectl
from tests.e2e.conftest import own_operator_namespace
from tests.e2e.test_reconciler import deploy_store
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]

MISSING_HELPER = "dockyard/no-such-disk-helper:0"


@pytest.mark.usefixtures("crds", "stemcell")
def test_a_failing_copy_migration_keeps_the_old_disk_serving_and_backs_off(
    kubectl: Kubectl, kubeconfig: str, namespace_prefix: str, tmp_path: Path
) -> None:
    # The copy runs in a helper container on the VM: with no such image it cannot run.
    with own_operator_namespace(
        kubectl,
        kubeconfig,
        namespace_prefix,
        "m",
        tmp_path,
        env={"DOCKYARD_DISK_HELPER_IMAGE": MISSING_HELPER},
    ) as (own, namespace, get_object):
        own.start()
        store, original = deploy_store(
            kubectl, namespace, get_object, "stuck", in_place_resize=False
        )
        (old,) = store.provider.find_disks(store.disk_tags)
        store.grow(kubectl, namespace, "stuck")

        def failures() -> list[tuple[float, str]]:
            found = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
            return sorted(
                (datetime.fromisoformat(e["firstTimestamp"]).timestamp(), e["message"])
                for e in found["items"]
                if e["reason"] == "MigrateDiskFailed"
            )

        first = wait_for(failures, timeout=120, what="a failed migration")
        assert MISSING_HELPER in first[0][1], first

        # Meanwhile db runs again, on the old disk with its data; the unfinished copy is gone.
        def serving() -> bool:
            disks = [d.id for d in store.provider.find_disks(store.disk_tags)]
            return disks == [old.id] and store.checksum() == original

        wait_for(serving, timeout=60, what="db back on the old disk")

        # Not Ready (the grow is not done), and the status says why: a helper image that is
        # nowhere will not appear by itself, so it is Stalled (and still retried).
        def refused() -> dict[str, str] | None:
            conditions = get_object("dyj", "stuck-store")["status"]["conditions"]
            ready = next(c for c in conditions if c["type"] == "Ready")
            return ready if ready["reason"] == "Refused" else None

        ready = wait_for(refused, timeout=60, what="Ready=False, reason Refused")
        assert ready["status"] == "False" and "MigrateDisk" in ready["message"], ready
        assert MISSING_HELPER in ready["message"], ready

        # Retried after a back-off (10 s, then 20 s), not on every pass.
        times = wait_for(
            lambda: (lambda found: found if len(found) >= 3 else None)(failures()),
            timeout=120,
            what="three failed migrations",
        )
        assert times[1][0] - times[0][0] >= 8, times
        assert times[2][0] - times[1][0] >= 18, times
        # Each try leaves its unfinished copy; the pass after it deletes it again.
        wait_for(serving, timeout=60, what="db on the old disk again, the copy gone")
