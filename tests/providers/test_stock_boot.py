"""The boot path of a stock stemcell, really run: the user data the aws provider sends with
RunInstances (on moto) is executed in a local "VM" — a privileged container of a stock Debian
bookworm rootfs (debootstrap from Debian's packages, no engine inside: hack/debian-rootfs.sh) —
and the provider then reaches the engine it brought up, through its own client: the VM is
PENDING until the engine answers with the VM's own certificate, then RUNNING; a container runs;
an engine is refused when its certificate is of another CA or made for another VM, and the
engine refuses a client of another CA.

cloud-init itself does not run in the container (no systemd, no datasource): the test does
what the user data asks of it — its write_files (path, content, permissions) and its runcmd.

Cold, the script installs docker.io and e2fsprogs with apt-get inside the VM (a few minutes on
CI). The VM is then cached as an image keyed by the script and the stock image
(``dockyard/debian-booted:<key>``, as hack/bake-stemcell.sh bakes one for a cloud): a warm run
boots from it, where the script finds the packages and still writes the certificate and starts
the engine. DOCKYARD_COLD_BOOT=1 ignores the cache.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
import yaml

from dockyard.providers import bootstrap, engineca
from dockyard.providers.aws import ENGINE_NAME_TAG, ENGINE_READY_TAG, AWSProvider
from dockyard.providers.base import STAND_IN_FLAGS, VMSpec, VMState
from dockyard.providers.dockertls import DockerTLS
from dockyard.providers.gce import ENGINE_READY_KEY, USER_DATA_KEY, GCEProvider
from tests.conftest import REPO, WORKLOAD_IMAGE, _locked, _run_script
from tests.providers.conftest import (
    DEBIAN_OWNER,
    MotoServer,
    aws_config,
    aws_leftovers,
    gce_config,
)
from tests.providers.gce_fake import GCEFake

pytestmark = pytest.mark.e2e

CACHE_REPOSITORY = "dockyard/debian-booted"
# The nested engine's networks must not clash with the host's (the VM sits on docker0).
INNER_DAEMON_JSON = (
    '{"live-restore": true, "bip": "10.217.255.1/24", '
    '"default-address-pools": [{"base": "10.217.0.0/17", "size": 24}]}'
)
# As hack/stemcell.sh's init: /sys and the cgroup hierarchies writable (the stand-in for
# --privileged leaves them read-only); then the "VM" idles while the test drives it.
INIT = (
    "mount -o remount,rw /sys 2>/dev/null; "
    "for m in $(awk '$2 ~ \"^/sys/fs/cgroup\" {print $2}' /proc/mounts); do "
    'mount -o remount,bind,rw "$m" 2>/dev/null; done; '
    "exec sleep infinity"
)


def _stock_image() -> str:
    with _locked("debian-rootfs"):
        result = subprocess.run(
            ["bash", str(REPO / "hack" / "debian-rootfs.sh"), "stock"],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"hack/debian-rootfs.sh stock failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def _host_flags(host: docker.DockerClient, image: str) -> dict[str, Any]:
    """--privileged when the host allows it, else the stand-in (as the local provider)."""
    probe = host.api.create_container(
        image, command=["true"], host_config=host.api.create_host_config(privileged=True)
    )
    try:
        host.api.start(probe["Id"])
        return {"privileged": True}
    except docker.errors.APIError:
        return dict(STAND_IN_FLAGS)
    finally:
        host.api.remove_container(probe["Id"], force=True)


def _tar(files: list[dict[str, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in files:
            data = entry["content"].encode()
            info = tarfile.TarInfo(entry["path"].lstrip("/"))
            info.size, info.mode = len(data), int(entry.get("permissions", "0644"), 8)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class LocalVM:
    """A privileged container of a Debian rootfs, playing a cloud VM at first boot."""

    def __init__(self, host: docker.DockerClient, image: str) -> None:
        self.host = host
        flags = _host_flags(host, image)
        host_config = host.api.create_host_config(
            mounts=[docker.types.Mount("/var/lib/docker", None, type="volume")], **flags
        )
        if "privileged" not in flags:
            host_config["MaskedPaths"], host_config["ReadonlyPaths"] = [], []
        created = host.api.create_container(
            image,
            entrypoint=["/bin/sh", "-c", INIT],
            name=f"dockyard-boot-{uuid.uuid4().hex[:8]}",
            labels={"dockyard.test": "stock-boot"},
            host_config=host_config,
        )
        self.id: str = created["Id"]
        host.api.start(self.id)
        self.container = host.containers.get(self.id)
        self.address: str = self.container.attrs["NetworkSettings"]["IPAddress"]

    def run(self, *command: str) -> tuple[int, str]:
        result = self.container.exec_run(list(command))
        return result.exit_code, result.output.decode(errors="replace")

    def apply_user_data(self, document: dict[str, Any]) -> tuple[int, str]:
        """What cloud-init does with this user data: write_files, then runcmd."""
        self.container.put_archive("/", _tar(document["write_files"]))
        output = []
        for command in document["runcmd"]:
            code, out = self.run(*command)
            output.append(out)
            if code != 0:
                return code, "".join(output)
        return 0, "".join(output)

    def bake(self, tag: str) -> None:
        """Keep this VM as an image (what hack/bake-stemcell.sh does on a cloud builder VM):
        the engine stopped, no certificate, no state of its own."""
        self.run(
            "sh",
            "-c",
            "kill $(cat /var/run/docker.pid) 2>/dev/null; sleep 2; "
            "rm -rf /etc/dockyard /var/lib/dockyard /var/log/dockerd.log /var/run/docker.pid "
            "/etc/default/docker /etc/docker/daemon.json",
        )
        repository, _, label = tag.partition(":")
        self.container.commit(repository=repository, tag=label)

    def remove(self) -> None:
        self.host.api.remove_container(self.id, force=True, v=True)


def _vm_image(host: docker.DockerClient) -> tuple[str, str, bool]:
    """The image the "VM" boots from: the stock rootfs (cold), or the VM this boot script made
    before (warm); the cache tag; whether it is cold."""
    stock = _stock_image()
    key = hashlib.sha256(
        (bootstrap.boot_script(2376) + host.images.get(stock).id).encode()
    ).hexdigest()[:12]
    cached = f"{CACHE_REPOSITORY}:{key}"
    cold = bool(os.environ.get("DOCKYARD_COLD_BOOT"))
    try:
        host.images.get(cached)
    except docker.errors.ImageNotFound:
        cold = True
    return (stock if cold else cached), cached, cold


def _keep(host: docker.DockerClient, local: LocalVM, cached: str) -> None:
    """Cache the booted VM for warm runs; older scripts' VMs go."""
    local.bake(cached)
    for image in host.images.list(CACHE_REPOSITORY):
        for tag in image.tags:
            if tag != cached:
                host.images.remove(tag)


def _user_data(ec2: Any, vm_id: str) -> tuple[bytes, dict[str, Any]]:
    attribute = ec2.describe_instance_attribute(InstanceId=vm_id, Attribute="userData")
    raw = base64.b64decode(attribute["UserData"]["Value"])
    text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    assert text.startswith(b"#cloud-config\n")
    return raw, yaml.safe_load(text)


def _point(moto: MotoServer, moto_address: str, address: str) -> None:
    """EC2 answers with the local VM's address for this instance's private IP."""
    moto.clear()
    moto.rewrite_next("DescribeInstances", f">{moto_address}<", f">{address}<", times=100_000)


@pytest.fixture
def host() -> Iterator[docker.DockerClient]:
    with _locked("docker"):
        _run_script("docker-up.sh")
    client = docker.from_env(timeout=300)
    yield client
    client.close()


def test_a_stock_debian_boots_into_an_engine_the_provider_reaches_over_mutual_tls(
    host: docker.DockerClient,
    moto: MotoServer,
    ec2: Any,
    publish_ami: Any,
    record_property: Any,
    tmp_path: Path,
) -> None:
    publish_ami("debian-12-amd64-20250101-1980", owner=DEBIAN_OWNER, created="2025-01-01T00:00:00")
    now = datetime.datetime.now(datetime.UTC)
    ca = engineca.generate_ca(now)
    scope = f"t-{uuid.uuid4().hex[:10]}"
    credentials = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        engineca.CA_CERT_KEY: ca.cert_pem,
        engineca.CA_KEY_KEY: ca.key_pem,
    }
    provider = AWSProvider(aws_config(moto, scope, credentials=credentials))

    vm_image, cached, cold = _vm_image(host)
    local: LocalVM | None = None
    try:
        vm = provider.create_vm(
            VMSpec(tags={"owner-uid": scope, "index": "0"}, stemcell="debian-12")
        )
        other = provider.create_vm(
            VMSpec(tags={"owner-uid": scope, "index": "1"}, stemcell="debian-12")
        )
        raw, document = _user_data(ec2, vm.id)
        record_property("user_data_bytes", len(raw))
        assert len(raw) <= bootstrap.EC2_USER_DATA_LIMIT
        assert vm.address and other.address

        local = LocalVM(host, vm_image)
        local.run(
            "sh",
            "-c",
            f"mkdir -p /etc/docker && echo '{INNER_DAEMON_JSON}' >/etc/docker/daemon.json",
        )
        _point(moto, vm.address, local.address)
        # Booting: EC2 says running, the engine does not answer yet.
        assert provider.vm_state(vm.id) is VMState.PENDING

        started = time.monotonic()
        code, output = local.apply_user_data(document)
        boot_seconds = time.monotonic() - started
        record_property("boot_seconds", round(boot_seconds, 1))
        record_property("boot_cold", cold)
        print(f"boot script: {boot_seconds:.1f} s ({'cold' if cold else 'warm, ' + cached})")
        assert code == 0, f"the boot script failed:\n{output[-3000:]}"
        assert "engine ready" in output
        code, tools = local.run("sh", "-c", "command -v mkfs.ext4 e2fsck resize2fs blkid mount")
        assert code == 0, tools

        # The provider sees it booted (its engine answers with its own certificate): ready tag.
        (found,) = [v for v in provider.find_vms({"owner-uid": scope}) if v.id == vm.id]
        assert found.state is VMState.RUNNING
        tags = {
            t["Key"]: t["Value"]
            for t in ec2.describe_instances(InstanceIds=[vm.id])["Reservations"][0]["Instances"][0][
                "Tags"
            ]
        }
        assert tags.get(ENGINE_READY_TAG)

        # The provider's own engine client: a container runs on the VM's engine.
        engine = provider.docker_client(vm.id)
        try:
            engine.images.load(b"".join(host.images.get(WORKLOAD_IMAGE).save(named=True)))
            out = engine.containers.run(WORKLOAD_IMAGE, ["echo", "hello from the VM"], remove=True)
            assert out.decode().strip() == "hello from the VM"
            assert engine.version()["ApiVersion"]
        finally:
            engine.close()

        # A client that trusts another CA refuses the engine (and the engine refuses its cert).
        stranger = engineca.generate_ca(now)
        wrong = DockerTLS(
            {engineca.CA_CERT_KEY: stranger.cert_pem, engineca.CA_KEY_KEY: stranger.key_pem}
        )
        try:
            client = wrong.client(
                local.address,
                engine_name=tags[ENGINE_NAME_TAG],
                ca_fingerprint=stranger.fingerprint,
            )
            with pytest.raises(
                requests.exceptions.SSLError, match=r"(?i)certificate verify failed"
            ):
                client.ping()
        finally:
            wrong.close()
        # The engine refuses a client certificate of another CA (from a client trusting its CA).
        client_of_stranger = engineca.issue_client(stranger, now)
        (tmp_path / "cert.pem").write_text(client_of_stranger.cert_pem)
        (tmp_path / "key.pem").write_text(client_of_stranger.key_pem)
        right = DockerTLS(credentials)
        try:
            client = right.client(
                local.address, engine_name=tags[ENGINE_NAME_TAG], ca_fingerprint=ca.fingerprint
            )
            assert client.ping()  # with the operator's own client certificate: fine
            client.api.cert = (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
            client.api.close()  # no pooled connection with the right certificate
            with pytest.raises(requests.exceptions.RequestException):
                client.ping()
        finally:
            right.close()

        # A certificate made for another VM: the other VM's address leads to this engine.
        _point(moto, other.address, local.address)
        engine = provider.docker_client(other.id)
        try:
            with pytest.raises(
                requests.exceptions.SSLError, match=r"(?i)hostname mismatch|doesn't match"
            ):
                engine.ping()
        finally:
            engine.close()
        assert provider.vm_state(other.id) is VMState.PENDING  # never counted as booted
        moto.clear()

        if cold:
            _keep(host, local, cached)
    finally:
        moto.clear()
        if local is not None:
            local.remove()
        for made in provider.find_vms({}):
            provider.delete_vm(made.id)
        provider.close()
    assert aws_leftovers(ec2, scope) == []


def test_gce_boots_the_same_way_from_the_debian_family(
    host: docker.DockerClient, gce_fake: GCEFake
) -> None:
    """The GCE provider's side of the same path: the user data in the instance's metadata, the
    VM pending until its engine answers (then marked ready in its metadata), the engine reached
    by name; another VM's address leading here is refused."""
    gce_fake.add_image(
        "debian-cloud", "debian-12-bookworm-v20250610", "debian-12", created="2025-06-10T00:00:00Z"
    )
    ca = engineca.generate_ca(datetime.datetime.now(datetime.UTC))
    credentials = {engineca.CA_CERT_KEY: ca.cert_pem, engineca.CA_KEY_KEY: ca.key_pem}
    vm_image, cached, cold = _vm_image(host)
    local = LocalVM(host, vm_image)
    provider = GCEProvider(
        gce_config(gce_fake, f"t-{uuid.uuid4().hex[:10]}", credentials=credentials)
    )
    try:
        local.run(
            "sh",
            "-c",
            f"mkdir -p /etc/docker && echo '{INNER_DAEMON_JSON}' >/etc/docker/daemon.json",
        )
        gce_fake.network_ips = iter([local.address, local.address])  # both VMs' addresses: here
        vm = provider.create_vm(VMSpec(tags={"owner-uid": "g", "index": "0"}, stemcell="debian-12"))
        other = provider.create_vm(
            VMSpec(tags={"owner-uid": "g", "index": "1"}, stemcell="debian-12")
        )

        def metadata(name: str) -> dict[str, str]:
            (found,) = [i for i in gce_fake.all_instances() if i["name"] == name]
            return {item["key"]: item["value"] for item in found["metadata"]["items"]}

        assert provider.vm_state(vm.id) is VMState.PENDING
        code, output = local.apply_user_data(yaml.safe_load(metadata(vm.id)[USER_DATA_KEY]))
        assert code == 0, output[-3000:]
        assert provider.vm_state(vm.id) is VMState.RUNNING
        assert metadata(vm.id).get(ENGINE_READY_KEY)
        engine = provider.docker_client(vm.id)
        try:
            engine.images.load(b"".join(host.images.get(WORKLOAD_IMAGE).save(named=True)))
            out = engine.containers.run(WORKLOAD_IMAGE, ["echo", "hello from GCE"], remove=True)
            assert out.decode().strip() == "hello from GCE"
        finally:
            engine.close()
        assert provider.vm_state(other.id) is VMState.PENDING  # its name is not this engine's
        stranger = provider.docker_client(other.id)
        try:
            with pytest.raises(
                requests.exceptions.SSLError, match=r"(?i)hostname mismatch|doesn't match"
            ):
                stranger.ping()
        finally:
            stranger.close()
        if cold:
            _keep(host, local, cached)
    finally:
        local.remove()
        for made in provider.find_vms({}, probe=False):
            provider.delete_vm(made.id)
        provider.close()
    assert gce_fake.all_instances() == []
