"""Helpers for testing the local provider on real Docker (used by test_local.py and the shared
contract suite): an isolated provider per root, what it left behind, and file access to a disk
THROUGH the VM's own engine, the way workloads see it."""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path, PurePosixPath

import docker
import docker.errors

from dockyard.providers.base import Attachment, ProviderConfig
from dockyard.providers.local import LocalProvider
from tests.conftest import WORKLOAD_IMAGE, _locked, _run_script

_stemcell_ready = False
_stemcell_lock = threading.Lock()
# One container argument carries at most 128 KiB (MAX_ARG_STRLEN) and all of them ~2 MiB.
_CHUNK = 64 * 1024
_CHUNKS_PER_RUN = 16


def ensure_stemcell() -> None:
    """Build (or find) the stemcell once per test process; hack/stemcell.sh is idempotent."""
    global _stemcell_ready
    with _stemcell_lock:
        if not _stemcell_ready:
            with _locked("docker"):
                _run_script("docker-up.sh")
            with _locked("stemcell"):
                _run_script("stemcell.sh")
            _stemcell_ready = True


def make_local_provider(root: Path) -> LocalProvider:
    """A provider whose state lives under ``root``; its network name and subnet derive from the
    root, so parallel test sessions never share or clash."""
    ensure_stemcell()
    return LocalProvider(ProviderConfig(type="local", options={"root": str(root)}))


def local_leftovers(provider: LocalProvider) -> list[str]:
    """Containers, volumes, networks, loop devices, mounts and files the provider left."""
    return provider.leftovers()


def purge_local(provider: LocalProvider) -> None:
    """Remove everything of the provider's root (teardown after a failed test)."""
    provider.purge()


def ensure_workload_image(provider: LocalProvider, vm_id: str) -> docker.DockerClient:
    """The VM's engine client, with the busybox workload image loaded into it."""
    engine = provider.docker_client(vm_id)
    try:
        engine.images.get(WORKLOAD_IMAGE)
    except docker.errors.ImageNotFound:
        host = docker.from_env()
        try:
            engine.images.load(b"".join(host.images.get(WORKLOAD_IMAGE).save(named=True)))
        finally:
            host.close()
    return engine


class DiskCommandError(RuntimeError):
    """A command run on a disk in a VM exited non-zero."""


def run_on_disk(
    provider: LocalProvider, vm_id: str, attachment: Attachment, script: str, *args: str
) -> bytes:
    """Run a busybox ``sh -c script`` in a container of the VM that binds the disk at /disk;
    return its stdout (an exec's output stream is complete; a finished container's logs can
    come back short)."""
    assert attachment.mount_path, "the local provider mounts disks itself"
    engine = ensure_workload_image(provider, vm_id)
    try:
        container = engine.containers.run(
            WORKLOAD_IMAGE,
            ["sleep", "600"],
            volumes={attachment.mount_path: {"bind": "/disk", "mode": "rw"}},
            detach=True,
        )
        try:
            code, (out, err) = container.exec_run(["sh", "-c", script, "sh", *args], demux=True)
        finally:
            container.remove(force=True)
    finally:
        engine.close()
    if code != 0:
        raise DiskCommandError(f"{script!r} exited {code}: {(err or b'').decode(errors='replace')}")
    return out or b""


def _path(relpath: str) -> str:
    path = PurePosixPath("/disk") / relpath
    assert ".." not in path.parts, relpath
    return str(path)


def write_file_on_disk(
    provider: LocalProvider, vm_id: str, attachment: Attachment, relpath: str, data: bytes
) -> None:
    """Write ``data`` to ``relpath`` on the attached disk from a container in the VM."""
    path = _path(relpath)
    chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""]
    for run_number, start in enumerate(range(0, len(chunks), _CHUNKS_PER_RUN)):
        encoded = [base64.b64encode(c).decode() for c in chunks[start : start + _CHUNKS_PER_RUN]]
        redirect = ">" if run_number == 0 else ">>"
        script = (
            f'mkdir -p "$(dirname {path})" && '
            f'for chunk in "$@"; do echo "$chunk" | base64 -d; done {redirect} {path} && sync'
        )
        run_on_disk(provider, vm_id, attachment, script, *encoded)


def read_file_on_disk(
    provider: LocalProvider, vm_id: str, attachment: Attachment, relpath: str
) -> bytes:
    """Read ``relpath`` from the attached disk from a container in the VM.
    Raises FileNotFoundError when the file is not there."""
    path = _path(relpath)
    try:
        out = run_on_disk(provider, vm_id, attachment, f"test -f {path} && base64 {path}")
    except DiskCommandError as error:
        raise FileNotFoundError(f"{relpath} on {attachment.mount_path} in VM {vm_id}") from error
    return base64.b64decode(out)


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
