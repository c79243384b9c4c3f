"""Remove everything the local provider made on this host (hack/local-cleanup.sh): for developers
and CI, never for a host whose VMs you want to keep."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path

import docker
import docker.errors

from dockyard.providers.base import ProviderConfig
from dockyard.providers.local.host import loop_devices
from dockyard.providers.local.provider import (
    DEFAULT_ROOT,
    LABEL,
    LABEL_NETWORK,
    LABEL_ROOT,
    LABEL_ROOT_PATH,
    LocalProvider,
)

_DISK_IMAGE = re.compile(r"^(?P<root>/.+)/disks/disk-[0-9a-f]+\.img$")


def known_roots(client: docker.DockerClient) -> set[str]:
    """Roots named by our labels, by loop devices on our disk images, and the default one."""
    api = client.api
    roots = {DEFAULT_ROOT} if Path(DEFAULT_ROOT).is_dir() else set()
    labelled = [
        *api.containers(all=True, filters={"label": LABEL_ROOT_PATH}),
        *(api.volumes(filters={"label": LABEL_ROOT_PATH}).get("Volumes") or []),
        *api.networks(filters={"label": LABEL_ROOT_PATH}),
    ]
    roots |= {(item.get("Labels") or {})[LABEL_ROOT_PATH] for item in labelled}
    for backing in loop_devices().values():
        match = _DISK_IMAGE.match(backing)
        if match and Path(backing).with_suffix(".json").exists():
            roots.add(match["root"])
    return roots


def purge(roots: Iterable[str] = ()) -> list[str]:
    """Purge ``roots`` (every root found when empty); return what is still left."""
    client = docker.from_env(timeout=120)
    try:
        wanted = sorted(set(roots) or known_roots(client))
        left: list[str] = []
        for root in wanted:
            provider = LocalProvider(ProviderConfig(type="local", options={"root": root}))
            try:
                provider.purge()
                left += provider.leftovers()
            finally:
                provider.close()
        if not roots:
            _purge_unrooted(client)
        return left
    finally:
        client.close()


def _purge_unrooted(client: docker.DockerClient) -> None:
    """What older Dockyards labelled without a root path, and interrupted --privileged probes."""
    api = client.api
    for label in (LABEL_ROOT, LABEL + "local-probe"):
        for entry in api.containers(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(entry["Id"], force=True, v=True)
    for volume in api.volumes(filters={"label": LABEL_ROOT}).get("Volumes") or []:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_volume(volume["Name"], force=True)
    for network in api.networks(filters={"label": LABEL_NETWORK}):
        with contextlib.suppress(docker.errors.APIError):
            api.remove_network(network["Id"])
