"""Host plumbing of the local provider: commands, mounts, loop devices and a per-root lock."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dockyard.providers.base import TransientError


def run(*command: str, timeout: float = 120) -> str:
    """Run a host command; a failure is worth retrying (a busy device, a slow disk)."""
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TransientError(f"{command[0]}: {error}") from error
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        raise TransientError(f"{' '.join(command)}: {detail}")
    return result.stdout


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, in mount order."""
    with open("/proc/self/mountinfo") as mountinfo:
        return [_unescape(line.split()[4]) for line in mountinfo]


def is_mount_point(path: Path) -> bool:
    # os.path.ismount cannot see a bind of a folder onto itself (same device): ask the kernel.
    return str(path.absolute()) in mount_points()


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (the order to unmount them in)."""
    prefix = str(path.absolute())
    found = [m for m in mount_points() if m == prefix or m.startswith(prefix + "/")]
    return sorted(set(found), key=len, reverse=True)


def loop_devices() -> dict[str, str]:
    """Loop device → backing file, for every bound loop device."""
    out = run("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE")
    devices: dict[str, str] = {}
    for line in out.splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip():
            devices[name] = backing.strip().removesuffix(" (deleted)")
    return devices


class RootLock:
    """Serialises changes to one provider root across threads and processes (an operator and a
    test, two operators): a thread-reentrant lock around an flock on a file in the root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._file: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._file, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._file is not None:
                    os.close(self._file)  # closing releases the flock
                    self._file = None
