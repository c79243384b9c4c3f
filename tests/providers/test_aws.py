"""AWSProvider beyond the shared contract, on moto's server: error mapping, the EBS
modification and attachment paths moto never shows by itself (injected at the HTTP level),
configuration errors, scoping, and credentials that never reach a log line."""

from __future__ import annotations

import logging
import os
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.providers import available_providers, make_provider
from dockyard.providers.aws import AWSProvider
from dockyard.providers.base import (
    DiskSpec,
    NotFoundError,
    PermanentError,
    ProviderConfig,
    TransientError,
    VMSpec,
    VMState,
)
from tests.providers.conftest import AWS_REGION, MotoServer, aws_config, aws_leftovers


@pytest.fixture
def scope() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make(moto: MotoServer, ec2: Any, scope: str) -> Iterator[Any]:
    """Build providers on this test's scope; afterwards delete what is left and check."""
    made: list[AWSProvider] = []

    def build(
        *, zone: str = "", credentials: dict[str, str] | None = None, **options: str
    ) -> AWSProvider:
        config = aws_config(moto, scope, zone=zone, options=options, credentials=credentials)
        provider = AWSProvider(config)
        made.append(provider)
        return provider

    yield build
    moto.clear()
    if made:
        for vm in made[0].find_vms({}):
            made[0].delete_vm(vm.id)
        for disk in made[0].find_disks({}):
            made[0].delete_disk(disk.id)
    for provider in made:
        provider.close()
    assert aws_leftovers(ec2, scope) == []


def tags(**extra: str) -> dict[str, str]:
    return {"owner-uid": str(uuid.uuid4()), "index": "0", **extra}


def test_registry_finds_every_builtin_through_entry_points(moto: MotoServer) -> None:
    assert {"local", "aws", "gce"} <= set(available_providers())
    provider = make_provider(aws_config(moto, "registry"))
    try:
        assert isinstance(provider, AWSProvider)
    finally:
        provider.close()
    with pytest.raises(PermanentError, match=r"spec\.provider\.type.*openstack"):
        make_provider(ProviderConfig(type="openstack"))


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (ProviderConfig(type="aws"), "spec.provider.region"),
        (
            ProviderConfig(type="aws", region="eu-west-1", credentials={"aws_access_key_id": "AK"}),
            "credentials.aws_secret_access_key",
        ),
        (
            ProviderConfig(type="aws", region="eu-west-1", options={"wait_timeout": "soon"}),
            "spec.provider.options.wait_timeout",
        ),
        (
            ProviderConfig(type="aws", region="eu-west-1", options={"encrypted": "maybe"}),
            "spec.provider.options.encrypted",
        ),
        (
            ProviderConfig(type="aws", region="eu-west-1", options={"subnet": "subnet-1"}),
            "spec.provider.options.subnet",
        ),
    ],
)
def test_bad_configuration_names_the_field(config: ProviderConfig, field: str) -> None:
    with pytest.raises(PermanentError, match=field.replace(".", r"\.")):
        AWSProvider(config)


def test_a_vm_needs_an_image(make: Any) -> None:
    with pytest.raises(PermanentError, match=r"spec\.provider\.options\.image_id"):
        make().create_vm(VMSpec(tags=tags()))


@pytest.mark.parametrize(
    ("code", "status", "expected", "retry_after"),
    [
        ("RequestLimitExceeded", 503, TransientError, 5.0),
        ("InsufficientInstanceCapacity", 500, TransientError, 60.0),
        ("VcpuLimitExceeded", 400, TransientError, 300.0),
        ("InstanceLimitExceeded", 400, TransientError, 300.0),
        ("InvalidParameterValue", 400, PermanentError, None),
        ("UnauthorizedOperation", 403, PermanentError, None),
    ],
)
def test_ec2_errors_map_to_typed_errors(
    make: Any,
    moto: MotoServer,
    ami: str,
    code: str,
    status: int,
    expected: type[Exception],
    retry_after: float | None,
) -> None:
    provider = make()
    moto.fail_next("RunInstances", code, status=status)
    with pytest.raises(expected, match=code) as raised:
        provider.create_vm(VMSpec(tags=tags(), stemcell=ami))
    if retry_after is not None:
        assert isinstance(raised.value, TransientError)
        assert raised.value.retry_after == retry_after
    assert provider.find_vms({}) == []
    vm = provider.create_vm(VMSpec(tags=tags(), stemcell=ami))  # the fault was one call
    provider.delete_vm(vm.id)


def test_one_throttled_call_is_retried_by_the_sdk(make: Any, moto: MotoServer, ami: str) -> None:
    provider = make(api_attempts="3")
    before = moto.calls["RunInstances"]
    moto.fail_next("RunInstances", "RequestLimitExceeded", status=503)
    vm = provider.create_vm(VMSpec(tags=tags(), stemcell=ami))
    assert moto.calls["RunInstances"] - before == 2
    assert [found.id for found in provider.find_vms({})] == [vm.id]
    provider.delete_vm(vm.id)


def test_unreachable_endpoint_is_transient(moto: MotoServer) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = aws_config(moto, "nowhere")
    provider = AWSProvider(
        ProviderConfig(
            type="aws",
            region=AWS_REGION,
            endpoint=f"http://127.0.0.1:{port}",
            options={**config.options, "connect_timeout": "1"},
            credentials=config.credentials,
        )
    )
    try:
        with pytest.raises(TransientError, match="cannot reach EC2"):
            provider.find_vms({})
    finally:
        provider.close()


def test_states_follow_ec2_and_other_scopes_are_invisible(
    make: Any, ec2: Any, ami: str, moto: MotoServer
) -> None:
    provider = make()
    vm = provider.create_vm(VMSpec(tags=tags(), stemcell=ami))
    stranger = AWSProvider(aws_config(moto, "another-installation"))
    try:
        assert stranger.vm_state(vm.id) is VMState.MISSING
        assert stranger.find_vms({}) == []
        stranger.delete_vm(vm.id)  # not its VM: nothing happens to it
        assert provider.vm_state(vm.id) in (VMState.PENDING, VMState.RUNNING)
    finally:
        stranger.close()

    ec2.stop_instances(InstanceIds=[vm.id])
    assert provider.vm_state(vm.id) is VMState.STOPPED
    assert [found.id for found in provider.find_vms({})] == [vm.id]
    ec2.terminate_instances(InstanceIds=[vm.id])  # someone else terminated it
    assert provider.vm_state(vm.id) is VMState.MISSING
    assert provider.find_vms({}) == []
    with pytest.raises(NotFoundError):
        provider.set_vm_metadata(vm.id, {"a": "b"})


def test_disks_get_free_device_names_and_stay_in_their_zone(make: Any, ami: str) -> None:
    provider = make()
    vm = provider.create_vm(VMSpec(tags=tags(), stemcell=ami))
    first = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    second = provider.create_disk(DiskSpec(tags=tags(disk="b"), size_mib=1024))
    elsewhere = make(zone=f"{AWS_REGION}b")
    far = elsewhere.create_disk(DiskSpec(tags=tags(disk="c"), size_mib=1024))
    try:
        assert provider.attach_disk(vm.id, first.id).device == "/dev/sdf"
        assert provider.attach_disk(vm.id, second.id).device == "/dev/sdg"
        assert provider.attach_disk(vm.id, first.id).device == "/dev/sdf"
        with pytest.raises(PermanentError, match="availability zone"):
            provider.attach_disk(vm.id, far.id)
    finally:
        elsewhere.delete_disk(far.id)
        provider.delete_vm(vm.id)


def test_attaching_that_does_not_finish_in_time_is_transient_and_resumable(
    make: Any, moto: MotoServer, ami: str
) -> None:
    provider = make(wait_timeout="0.3")
    vm = provider.create_vm(VMSpec(tags=tags(), stemcell=ami))
    disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    # Real EBS takes seconds to attach; moto is instant: show the volume as not yet in use.
    moto.rewrite_next(
        "DescribeVolumes", "<status>in-use</status>", "<status>available</status>", times=1000
    )
    with pytest.raises(TransientError, match="attach"):
        provider.attach_disk(vm.id, disk.id)
    moto.clear()
    attachment = provider.attach_disk(vm.id, disk.id)  # the retry finds it attached
    assert attachment.device == "/dev/sdf"
    provider.delete_vm(vm.id)


def test_a_grow_still_modifying_is_transient_then_completes(
    make: Any, moto: MotoServer, ami: str
) -> None:
    provider = make(wait_timeout="0.3")
    disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    modifying = ("<modificationState>completed", "<modificationState>modifying")
    moto.rewrite_next("DescribeVolumesModifications", *modifying, times=1000)
    with pytest.raises(TransientError, match="still in progress"):
        provider.resize_disk(disk.id, 2048)
    calls = moto.calls["ModifyVolume"]

    # Asked again with a bigger size while the first grow runs: wait, do not stack another.
    with pytest.raises(TransientError, match="must wait") as raised:
        provider.resize_disk(disk.id, 4096)
    assert raised.value.retry_after == 60.0
    assert moto.calls["ModifyVolume"] == calls

    moto.clear()
    assert provider.resize_disk(disk.id, 2048).size_mib == 2048  # done now: nothing to send
    assert moto.calls["ModifyVolume"] == calls


def test_optimizing_counts_as_grown_and_failed_is_permanent(make: Any, moto: MotoServer) -> None:
    provider = make(wait_timeout="2")
    disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    moto.rewrite_next(
        "DescribeVolumesModifications",
        "<modificationState>completed",
        "<modificationState>optimizing",
        times=1000,
    )
    assert provider.resize_disk(disk.id, 2048).size_mib == 2048
    moto.clear()
    # Only the poll after the request sees 'failed' (the first describe is the pre-check).
    moto.rewrite_next(
        "DescribeVolumesModifications",
        "<modificationState>completed",
        "<modificationState>completed",
    )
    moto.rewrite_next(
        "DescribeVolumesModifications",
        "<modificationState>completed",
        "<modificationState>failed",
        times=1000,
    )
    with pytest.raises(PermanentError, match="failed"):
        provider.resize_disk(disk.id, 3072)


def test_the_six_hour_modification_limit_says_when_to_retry(make: Any, moto: MotoServer) -> None:
    provider = make()
    disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    provider.resize_disk(disk.id, 2048)  # a modification just now
    moto.fail_next("ModifyVolume", "VolumeModificationRateExceeded")
    with pytest.raises(TransientError) as raised:
        provider.resize_disk(disk.id, 3072)
    assert 6 * 3600 - 120 < raised.value.retry_after <= 6 * 3600

    moto.fail_next("ModifyVolume", "IncorrectModificationState")
    with pytest.raises(TransientError) as raised:
        provider.resize_disk(disk.id, 3072)
    assert raised.value.retry_after == 60.0
    assert provider.resize_disk(disk.id, 3072).size_mib == 3072


def test_docker_client_speaks_tls_with_private_cert_files(make: Any, ami: str) -> None:
    provider = make(docker_port="12376")
    vm = provider.create_vm(VMSpec(tags=tags(), stemcell=ami))
    with pytest.raises(PermanentError, match=r"docker_tls_ca.*docker_tls_cert.*docker_tls_key"):
        provider.docker_client(vm.id)

    pems = {"docker_tls_ca": "CA PEM", "docker_tls_cert": "CERT PEM", "docker_tls_key": "KEY PEM"}
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    with_tls = make(docker_port="12376", credentials={**keys, **pems})
    old_umask = os.umask(0)  # the files must be private whatever the process umask
    try:
        client = with_tls.docker_client(vm.id)
    finally:
        os.umask(old_umask)
    assert client.api.base_url == f"https://{vm.address}:12376"
    cert, key = (Path(p) for p in client.api.cert)
    ca = Path(client.api.verify)
    assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    for path in (cert, key, ca):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (ca.read_text(), cert.read_text(), key.read_text()) == ("CA PEM", "CERT PEM", "KEY PEM")
    client.close()
    with_tls.close()
    assert not cert.parent.exists(), "close() removes the key material"
    provider.delete_vm(vm.id)


def test_credentials_never_reach_logs_or_reprs(
    moto: MotoServer, ec2: Any, ami: str, scope: str, caplog: pytest.LogCaptureFixture
) -> None:
    canary = f"canary{uuid.uuid4().hex}"
    credentials = {
        "aws_access_key_id": f"AKIA{canary[:16].upper()}",
        "aws_secret_access_key": f"secret-{canary}",
        "aws_session_token": f"token-{canary}",
        "docker_tls_key": f"-----BEGIN PRIVATE KEY-----\nkey-{canary}\n-----END PRIVATE KEY-----",
    }
    config = aws_config(moto, scope, credentials=credentials)
    caplog.set_level(logging.DEBUG)
    provider = AWSProvider(config)
    try:
        vm = provider.create_vm(VMSpec(tags=tags(), stemcell=ami))
        disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
        provider.attach_disk(vm.id, disk.id)
        provider.resize_disk(disk.id, 2048)
        moto.fail_next("TerminateInstances", "RequestLimitExceeded", status=503)
        with pytest.raises(TransientError) as raised:
            provider.delete_vm(vm.id)
        provider.delete_disk(disk.id)
        provider.delete_vm(vm.id)
        shown = [caplog.text, repr(provider), repr(config), str(raised.value)]
    finally:
        provider.close()
    assert "Sending http request" in caplog.text, "botocore's DEBUG request logs were captured"
    secrets = [credentials["aws_access_key_id"], credentials["aws_secret_access_key"]]
    secrets += [credentials["aws_session_token"], canary]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert aws_leftovers(ec2, scope) == []
