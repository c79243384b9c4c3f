"""Stemcells from stock images: the engine certificates (pure), the user data (pure, and
checked by Debian's cloud-init), stock images looked up by name on moto and on the GCE fake, and
what the providers send and record for a VM they give a certificate."""

from __future__ import annotations

import base64
import datetime
import gzip
import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from dockyard.providers import bootstrap, engineca
from dockyard.providers.aws import ENGINE_CA_TAG, ENGINE_NAME_TAG, AWSProvider
from dockyard.providers.base import PermanentError, VMSpec, VMState
from dockyard.providers.gce import ENGINE_CA_KEY, ENGINE_NAME_KEY, USER_DATA_KEY, GCEProvider
from tests.conftest import REPO
from tests.providers.conftest import (
    DEBIAN_OWNER,
    GCE_PROJECT,
    MotoServer,
    aws_config,
    aws_leftovers,
    gce_config,
)
from tests.providers.gce_fake import GCEFake

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> engineca.EngineCA:
    return engineca.generate_ca(NOW)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


# --- certificates (pure) -------------------------------------------------------------------------


def test_a_vm_certificate_names_that_vm_and_chains_to_the_ca(ca: engineca.EngineCA) -> None:
    name = engineca.new_engine_name()
    assert name.endswith(".engine.dockyard.invalid") and name != engineca.new_engine_name()
    issued = engineca.issue_server(ca, name, NOW)
    cert, ca_cert = _cert(issued.cert_pem), _cert(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [name]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    assert "PRIVATE" not in repr(issued) and "PRIVATE" not in repr(ca)

    other = engineca.generate_ca(NOW)
    with pytest.raises(Exception):  # noqa: B017  (cryptography's InvalidSignature or ValueError)
        cert.verify_directly_issued_by(_cert(other.cert_pem))
    assert other.fingerprint != ca.fingerprint == engineca.ca_fingerprint(ca.cert_pem)


def test_the_client_certificate_is_for_clients_only(ca: engineca.EngineCA) -> None:
    issued = engineca.issue_client(ca, NOW)
    cert = _cert(issued.cert_pem)
    cert.verify_directly_issued_by(_cert(ca.cert_pem))
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_ca_that_is_not_a_pair_is_refused(ca: engineca.EngineCA) -> None:
    other = engineca.generate_ca(NOW)
    with pytest.raises(ValueError, match="not a pair"):
        engineca.load_ca(engineca.EngineCA(ca.cert_pem, other.key_pem))
    leaf = engineca.issue_server(ca, "x.engine.dockyard.invalid", NOW)
    with pytest.raises(ValueError, match="not a CA"):
        engineca.load_ca(engineca.EngineCA(leaf.cert_pem, leaf.key_pem))


# --- user data (pure, then Debian's cloud-init) --------------------------------------------------


def _user_data(ca: engineca.EngineCA, limit: int = bootstrap.EC2_USER_DATA_LIMIT) -> bytes:
    issued = engineca.issue_server(ca, engineca.new_engine_name(), NOW)
    return bootstrap.user_data(
        ca_pem=ca.cert_pem,
        cert_pem=issued.cert_pem,
        key_pem=issued.key_pem,
        port=2376,
        limit=limit,
    )


def test_user_data_writes_the_vm_its_files_and_runs_the_boot_script(
    ca: engineca.EngineCA,
) -> None:
    raw = _user_data(ca)
    assert raw.startswith(b"#cloud-config\n")
    assert len(raw) < bootstrap.EC2_USER_DATA_LIMIT // 2, len(raw)  # room for a longer chain
    document = yaml.safe_load(raw)
    files = {f["path"]: f for f in document["write_files"]}
    assert set(files) == {
        "/etc/dockyard/tls/ca.pem",
        "/etc/dockyard/tls/cert.pem",
        "/etc/dockyard/tls/key.pem",
        bootstrap.BOOT_SCRIPT,
    }
    assert files["/etc/dockyard/tls/key.pem"]["permissions"] == "0600"
    assert files["/etc/dockyard/tls/ca.pem"]["content"] == ca.cert_pem
    assert files[bootstrap.BOOT_SCRIPT]["content"] == bootstrap.boot_script(2376)
    assert document["runcmd"] == [[bootstrap.BOOT_SCRIPT]]
    script = bootstrap.boot_script(2376)
    assert "--tlsverify" in script and "tcp://0.0.0.0:$PORT" in script
    assert "docker.io e2fsprogs util-linux" in script


def test_user_data_is_gzipped_when_over_the_limit_and_refused_when_still_over(
    ca: engineca.EngineCA,
) -> None:
    plain = _user_data(ca)
    packed = _user_data(ca, limit=len(plain) - 1)
    assert packed[:2] == b"\x1f\x8b" and len(packed) < len(plain)
    assert gzip.decompress(packed).startswith(b"#cloud-config\n")
    with pytest.raises(ValueError, match="limit is 100"):
        _user_data(ca, limit=100)


@pytest.fixture(scope="module")
def cloud_init() -> str:
    """Debian's cloud-init, installed by the project's script."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "cloud-init.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_user_data_passes_cloud_init_schema(
    cloud_init: str, ca: engineca.EngineCA, tmp_path: Path
) -> None:
    path = tmp_path / "user-data"
    path.write_bytes(_user_data(ca))
    result = subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    # and the check is a real one: a misspelt module key is refused
    path.write_text("#cloud-config\nwrite_files:\n- path: /x\n  contnet: y\n")
    bad = subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0


def test_the_stemcell_builders_user_data_passes_cloud_init_schema(
    cloud_init: str, tmp_path: Path
) -> None:
    """hack/bake-stemcell.sh's builder runs the same script, told to stop after installing."""
    made = subprocess.run(
        ["bash", str(REPO / "hack" / "bake-stemcell.sh"), "user-data"],
        capture_output=True,
        text=True,
        check=True,
    )
    document = yaml.safe_load(made.stdout)
    files = {f["path"]: f["content"] for f in document["write_files"]}
    assert files[bootstrap.BOOT_SCRIPT] == bootstrap.boot_script(2376)
    assert bootstrap.BAKE_FILE in files and not any("PRIVATE KEY" in c for c in files.values())
    path = tmp_path / "user-data"
    path.write_text(made.stdout)
    result = subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_boot_script_is_posix_sh(tmp_path: Path) -> None:
    script = tmp_path / "boot.sh"
    script.write_text(bootstrap.boot_script(2376))
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stock_images_are_known_by_name() -> None:
    debian = bootstrap.stock_image("debian-12")
    assert debian is not None
    assert (debian.aws_owner, debian.aws_name_pattern) == ("136693071363", "debian-12-amd64-*")
    assert (debian.gce_project, debian.gce_family) == ("debian-cloud", "debian-12")
    assert bootstrap.stock_image("ami-0123456789abcdef0") is None
    assert bootstrap.stock_image("projects/p/global/images/x") is None


# --- AWS on moto ---------------------------------------------------------------------------------


def _engine_credentials(ca: engineca.EngineCA) -> dict[str, str]:
    return {engineca.CA_CERT_KEY: ca.cert_pem, engineca.CA_KEY_KEY: ca.key_pem}


@pytest.fixture
def aws(moto: MotoServer, ec2: Any, ca: engineca.EngineCA) -> Iterator[Any]:
    scope = f"t-{uuid.uuid4().hex[:10]}"
    made: list[AWSProvider] = []

    def build(*, engine_ca: bool = True, **options: str) -> AWSProvider:
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        if engine_ca:
            credentials |= _engine_credentials(ca)
        provider = AWSProvider(
            aws_config(
                moto, scope, options={"boot_timeout": "600", **options}, credentials=credentials
            )
        )
        made.append(provider)
        return provider

    yield build
    moto.clear()
    for vm in made[0].find_vms({}, probe=False) if made else []:
        made[0].delete_vm(vm.id)
    for provider in made:
        provider.close()
    assert aws_leftovers(ec2, scope) == []


def _instance(ec2: Any, vm_id: str) -> Any:
    return ec2.describe_instances(InstanceIds=[vm_id])["Reservations"][0]["Instances"][0]


def test_aws_boots_the_newest_debian_image_of_debians_own_account(
    aws: Any, ec2: Any, publish_ami: Any, ca: engineca.EngineCA, caplog: pytest.LogCaptureFixture
) -> None:
    publish_ami("debian-12-amd64-20240101-1600", owner=DEBIAN_OWNER, created="2024-01-01T00:00:00")
    newest = publish_ami(
        "debian-12-amd64-20250601-2100", owner=DEBIAN_OWNER, created="2025-06-01T00:00:00"
    )
    # Newer, but not Debian's; and Debian's, but not available yet or another release.
    publish_ami(
        "debian-12-amd64-20991231-9999", owner="999988887777", created="2099-12-31T00:00:00"
    )
    publish_ami(
        "debian-12-amd64-20260101-2200",
        owner=DEBIAN_OWNER,
        created="2026-01-01T00:00:00",
        state="pending",
    )
    publish_ami("debian-13-amd64-20260101-100", owner=DEBIAN_OWNER, created="2026-01-01T00:00:00")

    caplog.set_level(logging.DEBUG)
    provider = aws()
    vm = provider.create_vm(VMSpec(tags={"owner-uid": "a", "index": "0"}, stemcell="debian-12"))
    logged = caplog.text  # before this test's own client reads the user data back
    instance = _instance(ec2, vm.id)
    assert instance["ImageId"] == newest
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[ENGINE_NAME_TAG].endswith(".engine.dockyard.invalid")
    assert tags[ENGINE_CA_TAG] == ca.fingerprint
    assert vm.tags == {"owner-uid": "a", "index": "0"}  # the engine's tags are not the VM's
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1

    raw = base64.b64decode(
        ec2.describe_instance_attribute(InstanceId=vm.id, Attribute="userData")["UserData"]["Value"]
    )
    files = {f["path"]: f["content"] for f in yaml.safe_load(raw)["write_files"]}
    cert = _cert(files["/etc/dockyard/tls/cert.pem"])
    cert.verify_directly_issued_by(_cert(ca.cert_pem))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [tags[ENGINE_NAME_TAG]]
    # The VM's private key was in a RunInstances request botocore logged: never in clear.
    key_lines = files["/etc/dockyard/tls/key.pem"].splitlines()[1:-1]
    assert "RunInstances" in logged and "'UserData': '***'" in logged
    for line in key_lines:
        assert line not in logged
    assert base64.b64encode(raw).decode()[:40] not in logged

    # Booting: EC2 says running, its engine does not answer (moto's address leads nowhere).
    assert provider.vm_state(vm.id) is VMState.PENDING
    assert [v.state for v in provider.find_vms({"owner-uid": "a"})] == [VMState.PENDING]
    # A second VM has a name (and a certificate) of its own.
    second = provider.create_vm(VMSpec(tags={"owner-uid": "a", "index": "1"}, stemcell="debian-12"))
    second_tags = {t["Key"]: t["Value"] for t in _instance(ec2, second.id)["Tags"]}
    assert second_tags[ENGINE_NAME_TAG] != tags[ENGINE_NAME_TAG]


def test_aws_a_vm_that_never_answers_counts_as_running_after_the_boot_timeout(
    aws: Any, publish_ami: Any
) -> None:
    publish_ami("debian-12-amd64-20250601-2100", owner=DEBIAN_OWNER, created="2025-06-01T00:00:00")
    provider = aws(boot_timeout="1")
    vm = provider.create_vm(VMSpec(tags={"owner-uid": "b", "index": "0"}, stemcell="debian-12"))
    deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=10)
    while provider.vm_state(vm.id) is not VMState.RUNNING:  # then the runtime's unresponsive
        assert datetime.datetime.now(datetime.UTC) < deadline  # timeout replaces it
        time.sleep(0.2)


def test_aws_stock_images_need_the_engine_ca_and_an_image_of_debian(aws: Any) -> None:
    without = aws(engine_ca=False)
    with pytest.raises(PermanentError, match=r"engine_ca_cert"):
        without.create_vm(VMSpec(tags={"owner-uid": "c", "index": "0"}, stemcell="debian-12"))
    with pytest.raises(PermanentError, match=r"spec\.provider\.options\.image_id"):
        without.create_vm(VMSpec(tags={"owner-uid": "c", "index": "0"}))
    with_ca = aws()
    with pytest.raises(PermanentError, match=r"debian-12-amd64-\*.*136693071363"):
        with_ca.create_vm(VMSpec(tags={"owner-uid": "c", "index": "0"}))  # none published


def test_aws_a_custom_image_gets_its_certificate_too(aws: Any, ec2: Any, ami: str) -> None:
    """A baked stemcell: the same user data (its install step finds the packages there)."""
    provider = aws()
    vm = provider.create_vm(VMSpec(tags={"owner-uid": "d", "index": "0"}, stemcell=ami))
    instance = _instance(ec2, vm.id)
    assert instance["ImageId"] == ami
    assert ENGINE_NAME_TAG in {t["Key"] for t in instance["Tags"]}
    # Without the operator's CA (an image with its own certificate): no user data, as before.
    legacy = aws(engine_ca=False)
    old = legacy.create_vm(VMSpec(tags={"owner-uid": "d", "index": "1"}, stemcell=ami))
    attribute = ec2.describe_instance_attribute(InstanceId=old.id, Attribute="userData")
    assert not attribute.get("UserData", {}).get("Value")
    assert legacy.vm_state(old.id) in (VMState.PENDING, VMState.RUNNING)


# --- GCE on the fake -----------------------------------------------------------------------------


def test_gce_boots_the_newest_image_of_the_debian_family(
    gce_fake: GCEFake, ca: engineca.EngineCA
) -> None:
    gce_fake.add_image(
        "debian-cloud",
        "debian-12-bookworm-v20240110",
        "debian-12",
        created="2024-01-10T00:00:00.000-08:00",
    )
    newest = gce_fake.add_image(
        "debian-cloud",
        "debian-12-bookworm-v20250610",
        "debian-12",
        created="2025-06-10T00:00:00.000-07:00",
    )
    gce_fake.add_image(
        "debian-cloud",
        "debian-12-bookworm-v20260101",
        "debian-12",
        created="2026-01-01T00:00:00.000-08:00",
        deprecated=True,
    )
    gce_fake.add_image(
        "debian-cloud",
        "debian-13-trixie-v20260101",
        "debian-13",
        created="2026-01-01T00:00:00.000-08:00",
    )
    gce_fake.add_image(
        GCE_PROJECT, "debian-12-mine", "debian-12", created="2030-01-01T00:00:00.000-08:00"
    )
    config = gce_config(gce_fake, f"t-{uuid.uuid4().hex[:10]}", credentials=_engine_credentials(ca))
    provider = GCEProvider(config)
    try:
        vm = provider.create_vm(VMSpec(tags={"owner-uid": "g", "index": "0"}, stemcell="debian-12"))
        (instance,) = gce_fake.all_instances()
        boot = [d for d in gce_fake.all_disks() if d["name"] == instance["name"]]
        assert boot[0]["sourceImage"] == newest
        metadata = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
        assert metadata[ENGINE_NAME_KEY].endswith(".engine.dockyard.invalid")
        assert metadata[ENGINE_CA_KEY] == ca.fingerprint
        document = yaml.safe_load(metadata[USER_DATA_KEY])
        files = {f["path"]: f["content"] for f in document["write_files"]}
        cert = _cert(files["/etc/dockyard/tls/cert.pem"])
        cert.verify_directly_issued_by(_cert(ca.cert_pem))
        assert vm.tags == {"owner-uid": "g", "index": "0"}
        assert provider.vm_state(vm.id) is VMState.PENDING  # its engine does not answer
        with pytest.raises(PermanentError, match="reserved"):
            provider.set_vm_metadata(vm.id, {USER_DATA_KEY: "#cloud-config\n"})
        provider.delete_vm(vm.id)
        # A family with no image: a permanent error naming it.
        with pytest.raises(PermanentError, match="family debian-12-arm64 of project debian-cloud"):
            provider.create_vm(
                VMSpec(tags={"owner-uid": "g", "index": "1"}, stemcell="debian-12-arm64")
            )
        assert gce_fake.all_instances() == []
    finally:
        provider.close()


def test_aws_vms_booting_at_once_are_probed_side_by_side(
    aws: Any, moto: MotoServer, publish_ami: Any
) -> None:
    """Each probe of a booting VM may wait seconds (an address that takes the connection and
    says nothing): a look at many booting VMs costs about one probe, not one per VM."""
    publish_ami("debian-12-amd64-20250601-2100", owner=DEBIAN_OWNER, created="2025-06-01T00:00:00")
    with socket.socket() as silent:  # accepts, never speaks TLS
        silent.bind(("0.0.0.0", 0))
        silent.listen(16)
        provider = aws(docker_port=str(silent.getsockname()[1]))
        vms = [
            provider.create_vm(
                VMSpec(tags={"owner-uid": "p", "index": str(i)}, stemcell="debian-12")
            )
            for i in range(4)
        ]
        first = {vm.address.split(".")[0] for vm in vms if vm.address}
        assert len(first) == 1
        (octet,) = first
        # every VM's private address leads to this host (127/8 is all loopback)
        moto.rewrite_next("DescribeInstances", f">{octet}.", ">127.", times=100)
        started = time.monotonic()
        found = provider.find_vms({"owner-uid": "p"})
        elapsed = time.monotonic() - started
        assert [vm.state for vm in found] == [VMState.PENDING] * 4
        assert all(vm.address and vm.address.startswith("127.") for vm in found)
        assert 2.5 < elapsed < 7.0, elapsed  # one 3 s probe timeout, not four
        moto.clear()
