"""Disks of the local provider: a sparse file with ext4 on a loop device.

Online grow (resize2fs on a mounted filesystem) needs CAP_SYS_RESOURCE, which this kind of host
lacks, so disks grow offline: detached, truncated, checked and resized, then attached again.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dockyard.providers.base import PermanentError, TransientError

MIB = 1024 * 1024


@dataclass
class DiskRecord:
    """The sidecar: what the disk is, who it belongs to and where it is attached."""

    id: str
    size_mib: int
    tags: dict[str, str]
    disk_type: str = ""
    attached_to: str | None = None
    mount_point: str | None = None  # on the host, while attached
    extra: dict[str, str] = field(default_factory=dict)


def run(*command: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TransientError(f"{command[0]}: {error}") from error
    if result.returncode != 0:
        raise TransientError(
            f"{' '.join(command)}: {result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


class DiskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def image(self, disk_id: str) -> Path:
        return self.root / f"{disk_id}.img"

    def _sidecar(self, disk_id: str) -> Path:
        return self.root / f"{disk_id}.json"

    def load(self, disk_id: str) -> DiskRecord | None:
        try:
            data = json.loads(self._sidecar(disk_id).read_text())
        except FileNotFoundError:
            return None
        return DiskRecord(**data)

    def save(self, record: DiskRecord) -> None:
        temporary = self._sidecar(record.id).with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record), sort_keys=True))
        os.replace(temporary, self._sidecar(record.id))  # atomic: a crash never leaves half a file

    def all(self) -> list[DiskRecord]:
        records = []
        for sidecar in sorted(self.root.glob("*.json")):
            record = self.load(sidecar.stem)
            if record is not None:
                records.append(record)
        return records

    def find(self, tags: Mapping[str, str]) -> list[DiskRecord]:
        return [r for r in self.all() if all(r.tags.get(k) == v for k, v in tags.items())]

    def create(self, tags: Mapping[str, str], size_mib: int, disk_type: str) -> DiskRecord:
        if size_mib <= 0:
            raise PermanentError(f"disk size must be positive, got {size_mib} MiB")
        record = DiskRecord(
            id=f"disk-{uuid.uuid4().hex[:12]}",
            size_mib=size_mib,
            tags=dict(tags),
            disk_type=disk_type,
        )
        image = self.image(record.id)
        with open(image, "wb") as handle:
            handle.truncate(size_mib * MIB)
        try:
            run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1", str(image))
        except TransientError:
            image.unlink(missing_ok=True)
            raise
        # The sidecar comes last: a disk without one was never handed out.
        self.save(record)
        return record

    def loop_device(self, disk_id: str) -> str | None:
        out = run("losetup", "-j", str(self.image(disk_id)))
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
        if record.mount_point and os.path.ismount(record.mount_point):
            run("umount", record.mount_point)
        if record.mount_point:
            with contextlib.suppress(OSError):
                Path(record.mount_point).rmdir()
        device = self.loop_device(record.id)
        if device:
            run("losetup", "-d", device)

    def grow(self, record: DiskRecord, size_mib: int) -> None:
        """Offline grow of a detached disk; the data stays."""
        image = str(self.image(record.id))
        with open(image, "r+b") as handle:
            handle.truncate(size_mib * MIB)
        fsck = subprocess.run(["e2fsck", "-f", "-p", image], capture_output=True, text=True)
        if fsck.returncode >= 4:  # 1 and 2 mean "errors corrected"
            raise TransientError(f"e2fsck {image}: {fsck.stdout}{fsck.stderr}")
        run("resize2fs", image)

    def delete(self, record: DiskRecord) -> None:
        self._sidecar(record.id).unlink(missing_ok=True)
        self.image(record.id).unlink(missing_ok=True)
