"""A persistent disk's filesystem inside a VM whose provider only attaches block devices (aws,
gce): formatted when blank, mounted at ``/var/vcap/store/<disk id>``, grown to fill its device
after a resize, unmounted before a detach. And, on any provider, the copy of a disk
migration: from one mounted disk onto another, verified.

BOSH's agent does this on the VM. Dockyard has no agent: a short-lived helper container on the
VM's own Docker engine, sharing the VM's PID namespace, enters the mount namespace of the VM's
PID 1 (``nsenter -t 1 -m``) and runs the VM's own ``blkid``/``mkfs.ext4``/``mount``/``resize2fs``,
so the mount is the VM's and its engine can bind it into containers.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import docker
import docker.errors
import requests.exceptions

from dockyard.providers.base import DISK_ROOT_IN_VM, STAND_IN_FLAGS, Attachment, ProviderError

log = logging.getLogger(__name__)

# Pulled by the VM's engine when missing; a cloud stemcell may carry it (any image with a
# busybox or util-linux nsenter and sh works: the tools used are the VM's own).
DEFAULT_HELPER_IMAGE = "busybox:1.36"
HELPER_LABEL = "dockyard.dev/disk-helper"

# $1 device, $2 serial (to look up in /dev/disk/by-id; may be empty), $3 mount point.
# Never formats a disk that holds anything: "no filesystem" alone is not "blank" (a blkid that
# cannot read a filesystem must not lead to a new one), the first MiB must be zeros too.
MOUNT_SCRIPT = r"""
set -eu
# the VM's tools, not the helper image's
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
dev=$1 serial=$2 target=$3
if [ ! -b "$dev" ] && [ -n "$serial" ]; then
  for link in /dev/disk/by-id/*"$serial"*; do
    if [ -e "$link" ]; then dev=$(readlink -f "$link"); break; fi
  done
fi
[ -b "$dev" ] || { echo "block device $1 not found (serial: ${serial:-none})" >&2; exit 3; }
for tool in blkid mkfs.ext4 e2fsck resize2fs mount; do
  command -v $tool >/dev/null || { echo "the VM has no $tool (e2fsprogs, util-linux)" >&2; exit 2; }
done
if [ -z "$(blkid "$dev" 2>/dev/null)" ]; then
  if [ "$(head -c 1048576 "$dev" | tr -d '\000' | wc -c)" -ne 0 ]; then
    echo "$dev has no filesystem blkid knows but is not blank: refusing to format it" >&2
    exit 4
  fi
  mkfs.ext4 -q -F -L dockyard "$dev"
fi
mkdir -p "$target"
if awk -v t="$target" '$2 == t {found = 1} END {exit !found}' /proc/mounts; then
  out=$(resize2fs "$dev" 2>&1) || { echo "growing $dev online: $out" >&2; exit 5; }
else
  # Not mounted yet: check and grow offline (needs no more than the mount does).
  e2fsck -f -p "$dev" >/dev/null 2>&1 || [ $? -le 1 ] || { echo "e2fsck $dev failed" >&2; exit 6; }
  out=$(resize2fs "$dev" 2>&1) || { echo "growing $dev: $out" >&2; exit 5; }
  mount "$dev" "$target"
fi
echo "$dev"
"""

UNMOUNT_SCRIPT = r"""
set -eu
# the VM's tools, not the helper image's
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
target=$1
sync
if awk -v t="$target" '$2 == t {found = 1} END {exit !found}' /proc/mounts; then
  umount "$target"
fi
"""


# $1 the old disk's mount point, $2 the new one's. A copy cut short is started again from an
# empty target; the copy is compared with its source before anyone may switch to it.
COPY_SCRIPT = r"""
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
from=$1 to=$2
for dir in "$from" "$to"; do
  awk -v t="$dir" '$2 == t {found = 1} END {exit !found}' /proc/mounts \
    || { echo "$dir is not a mounted disk" >&2; exit 3; }
done
find "$to" -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf {} \;
cp -a "$from/." "$to/" || { echo "copying $from to $to failed" >&2; exit 4; }
sync
out=$(diff -r "$from" "$to" 2>&1) || { echo "the copy differs from $from: $out" >&2; exit 5; }
"""


# A copy that takes longer fails and starts again from nothing: big disks copy for hours.
COPY_TIMEOUT = 6 * 3600.0


class DiskHelperFailed(ProviderError):
    """The helper ran in the VM and its script failed (the message says why)."""


def mount_point(disk_id: str) -> str:
    return f"{DISK_ROOT_IN_VM}/{disk_id}"


def _in_vm(
    client: docker.DockerClient, image: str, script: str, *args: str, timeout: float = 300
) -> str:
    """Run ``script`` with ``args`` in the VM's mount namespace; its stdout, or ProviderError
    with its stderr (also when it runs longer than ``timeout`` seconds)."""
    command = ["nsenter", "-t", "1", "-m", "--", "sh", "-c", script, "dockyard-disk", *args]
    base: dict[str, Any] = {
        "pid_mode": "host",
        "network_mode": "none",
        "labels": {HELPER_LABEL: "1"},
        "detach": True,
    }
    try:
        container = client.containers.create(image, command, privileged=True, **base)
    except docker.errors.DockerException as error:
        raise ProviderError(f"disk helper: {error}") from error
    try:
        try:
            container.start()
        except docker.errors.APIError as error:
            if "operation not permitted" not in str(error):
                raise
            container.remove(force=True)
            log.debug("--privileged refused on this VM; disk helper with the stand-in flags")
            container = client.containers.create(image, command, **base, **STAND_IN_FLAGS)
            container.start()
        status: dict[str, Any] = container.wait(timeout=timeout)
        out: str = container.logs(stdout=True, stderr=False).decode(errors="replace").strip()
        err = container.logs(stdout=False, stderr=True).decode(errors="replace").strip()
    except docker.errors.DockerException as error:
        raise ProviderError(f"disk helper: {error}") from error
    except requests.exceptions.RequestException as error:  # the wait timed out, or the VM went
        raise ProviderError(f"disk helper: no result in {timeout:.0f}s: {error}") from error
    finally:
        with contextlib.suppress(
            docker.errors.DockerException, requests.exceptions.RequestException
        ):
            container.remove(force=True)
    if status.get("StatusCode") != 0:
        why = err or out or f"exit code {status.get('StatusCode')}"
        raise DiskHelperFailed(f"disk in the VM: {why}")
    return out


def mount(
    client: docker.DockerClient, image: str, attachment: Attachment, disk_id: str
) -> Attachment:
    """Format (if blank), mount and grow the attached disk; idempotent. Returns the attachment
    with the mount point containers bind from, and the device the VM knows it by."""
    target = mount_point(disk_id)
    device = _in_vm(
        client,
        image,
        MOUNT_SCRIPT,
        attachment.device,
        attachment.serial or "",
        target,
    ).splitlines()
    return Attachment(
        device=device[-1] if device else attachment.device,
        mount_path=target,
        serial=attachment.serial,
    )


def unmount(client: docker.DockerClient, image: str, disk_id: str) -> None:
    """Flush and unmount the disk before it is detached (a no-op when it is not mounted)."""
    _in_vm(client, image, UNMOUNT_SCRIPT, mount_point(disk_id))


def copy(client: docker.DockerClient, image: str, source_disk: str, target_disk: str) -> None:
    """Copy everything on one mounted disk onto another (both mounted in the VM), and verify."""
    source, target = mount_point(source_disk), mount_point(target_disk)
    _in_vm(client, image, COPY_SCRIPT, source, target, timeout=COPY_TIMEOUT)


# $1 a path on the VM: where it really leads (symlinks followed), as far as it exists.
RESOLVE_SCRIPT = r"""
set -eu
p=$1 d=$1
while [ ! -e "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
echo "$(readlink -f "$d")${p#"$d"}"
"""


def resolve(client: docker.DockerClient, image: str, path: str) -> str:
    """Where ``path`` on the VM leads, symlinks followed (the part that does not exist yet as
    written): what a bind of it would really mount."""
    return _in_vm(client, image, RESOLVE_SCRIPT, path, timeout=60).splitlines()[-1]
