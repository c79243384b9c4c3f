"""Disks of the local provider: ext4 in a sparse file, on a loop device while attached.

Each disk is two files in the disks folder: ``<id>.img`` and its sidecar ``<id>.json`` (identity,
tags, size, where it is attached), so a restarted operator rediscovers every disk. Online grow
(resize2fs on a mounted filesystem) needs CAP_SYS_RESOURCE, which this kind of host lacks: disks
grow offline, detached (truncate, e2fsck, resize2fs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.providers.base import TransientError
from dockyard.providers.local.host import run

MIB = 1024 * 1024


@dataclass
class DiskRecord:
    """The sidecar: what the disk is, who it belongs to and where it is attached."""

    id: str
    size_mib: int
    tags: dict[str, str]
    disk_type: str = ""
    attached_to: str | None = None  # VM id
    mount_point: str | None = None  # on the host, while attached

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DiskRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: A directory changed this recently may change again within the same timestamp tick: a scan
#: is reused only once its directory's mtime is older than this (git's "racy" rule).
SETTLED_NS = 1_000_000_000


class DiskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # The last full read of the sidecars, reused while the directory is unchanged: every
        # change is an os.replace or an unlink, which moves the directory's mtime. Without it,
        # each observation of each Job read every disk's sidecar (N Jobs x N disks).
        self._scan: tuple[int, list[DiskRecord]] | None = None

    def image(self, disk_id: str) -> Path:
        return self.root / f"{disk_id}.img"

    def _sidecar(self, disk_id: str) -> Path:
        return self.root / f"{disk_id}.json"

    def load(self, disk_id: str) -> DiskRecord | None:
        if not disk_id or "/" in disk_id or disk_id.startswith("."):
            return None
        try:
            data = json.loads(self._sidecar(disk_id).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise TransientError(f"reading the sidecar of disk {disk_id}: {error}") from error
        return DiskRecord.from_json(data)

    def save(self, record: DiskRecord) -> None:
        temporary = self._sidecar(record.id).with_suffix(".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(record), sort_keys=True))
        os.replace(temporary, self._sidecar(record.id))  # atomic: a crash never leaves half a file

    def all(self) -> list[DiskRecord]:
        try:
            changed = self.root.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        scan = self._scan
        if scan is None or scan[0] != changed:
            records = []
            for sidecar in sorted(self.root.glob("*.json")):
                record = self.load(sidecar.stem)
                if record is not None:
                    records.append(record)
            settled = time.time_ns() - changed > SETTLED_NS
            self._scan = scan = (changed if settled else -1, records)
        # Copies: callers change records before they save them.
        return [dataclasses.replace(r, tags=dict(r.tags)) for r in scan[1]]

    def find(self, tags: Mapping[str, str]) -> list[DiskRecord]:
        return [r for r in self.all() if all(r.tags.get(k) == v for k, v in tags.items())]

    def build(
        self,
        tags: Mapping[str, str],
        size_mib: int,
        disk_type: str,
        from_image: Path | None = None,
        prefix: str = "disk",
    ) -> DiskRecord:
        """The image of a new disk — blank ext4, or (``from_image``) a copy of a snapshot's
        image grown to ``size_mib`` — not handed out yet (no sidecar; :meth:`commit` or
        :meth:`discard` it). A blank one needs no lock while it is made."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = DiskRecord(
            id=f"{prefix}-{uuid.uuid4().hex[:12]}",
            size_mib=size_mib,
            tags=dict(tags),
            disk_type=disk_type,
        )
        building = self._building(record.id)  # *.tmp: a purge removes it after a crash
        try:
            if from_image is not None:
                run("cp", "--sparse=always", str(from_image), str(building), timeout=3600)
                self._grow_image(building, size_mib)
            else:
                with open(building, "wb") as handle:
                    handle.truncate(size_mib * MIB)  # sparse: costs no space until written
                run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1", str(building))
        except TransientError:
            building.unlink(missing_ok=True)
            raise
        return record

    def _building(self, disk_id: str) -> Path:
        return self.root / f"{disk_id}.img.tmp"

    def commit(self, record: DiskRecord) -> None:
        os.replace(self._building(record.id), self.image(record.id))
        self.save(record)  # last: a disk without a sidecar was never handed out

    def discard(self, record: DiskRecord) -> None:
        self._building(record.id).unlink(missing_ok=True)

    def copy_of(self, record: DiskRecord, target: DiskStore, tags: Mapping[str, str]) -> DiskRecord:
        """A point-in-time copy of ``record``'s image into ``target`` (a snapshot). A mounted
        disk is frozen meanwhile (writes wait), so the copy is consistent."""
        target.root.mkdir(parents=True, exist_ok=True)
        copy = DiskRecord(
            id=f"snap-{uuid.uuid4().hex[:12]}",
            size_mib=record.size_mib,
            tags={**tags, "source-disk": record.id},
        )
        frozen = (
            record.mount_point
            if record.mount_point and os.path.ismount(record.mount_point)
            else None
        )
        if frozen:
            run("fsfreeze", "--freeze", frozen)
        try:
            run(
                "cp",
                "--sparse=always",
                str(self.image(record.id)),
                str(target.image(copy.id)),
                timeout=3600,
            )
        except TransientError:
            target.image(copy.id).unlink(missing_ok=True)
            raise
        finally:
            if frozen:
                run("fsfreeze", "--unfreeze", frozen)
        target.save(copy)
        return copy

    def loop_device(self, disk_id: str) -> str | None:
        """The loop device bound to the disk's image, if any. One still bound after a detach
        means a container in some VM still has the filesystem mounted."""
        out = run("losetup", "--associated", str(self.image(disk_id)))
        return out.split(":", 1)[0] if out.strip() else None

    def mount(self, record: DiskRecord, mount_point: Path) -> str:
        device = (
            self.loop_device(record.id)
            or run("losetup", "--find", "--show", str(self.image(record.id))).strip()
        )
        mount_point.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(mount_point):
            run("mount", "-t", "ext4", device, str(mount_point))
        return device

    def unmount(self, record: DiskRecord) -> None:
        if record.mount_point:
            if os.path.ismount(record.mount_point):
                run("umount", record.mount_point)
            with contextlib.suppress(OSError):
                Path(record.mount_point).rmdir()
        device = self.loop_device(record.id)
        if device:
            # Frees the device now, or (autoclear) when the last container using it stops.
            run("losetup", "--detach", device)

    def grow(self, record: DiskRecord, size_mib: int) -> None:
        """Offline grow of a detached disk; the data stays."""
        device = self.loop_device(record.id)
        if device is not None:
            raise TransientError(
                f"disk {record.id} is detached but still in use ({device} is bound): stop the "
                "containers that use it, then resize"
            )
        self._grow_image(self.image(record.id), size_mib)

    @staticmethod
    def _grow_image(path: Path, size_mib: int) -> None:
        image = str(path)
        if path.stat().st_size >= size_mib * MIB:
            return
        with open(image, "r+b") as handle:
            handle.truncate(size_mib * MIB)
        fsck = subprocess.run(
            ["e2fsck", "-f", "-p", image], capture_output=True, text=True, check=False, timeout=300
        )
        if fsck.returncode >= 4:  # 1 and 2 mean "errors corrected"
            raise TransientError(f"e2fsck {image}: {fsck.stdout}{fsck.stderr}")
        run("resize2fs", image, timeout=300)

    def delete(self, record: DiskRecord) -> None:
        self._sidecar(record.id).unlink(missing_ok=True)
        self.image(record.id).unlink(missing_ok=True)
