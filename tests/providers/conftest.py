"""Fixtures for the provider tests: one harness per IaaS (local on real Docker, AWS on moto's
server, GCE on the HTTP fake), each with a leak check that runs after every test.

moto runs in this process on 127.0.0.1:0 — moto's own WSGI app (what ThreadedMotoServer
serves) behind a thin middleware that can make chosen EC2 actions fail, or rewrite their answer
to show a state moto never reaches (an EBS modification still 'modifying'). Each test gets its
own ``scope`` option, so the server is shared without resets.
"""

from __future__ import annotations

import io
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from dockyard.providers.base import Attachment, Provider, ProviderConfig
from tests.providers.gce_fake import GCEFake

AWS_REGION = "us-east-1"
GCE_PROJECT = "dockyard-test"
GCE_ZONE = "europe-west1-b"
GCE_IMAGE = "projects/debian-cloud/global/images/family/debian-12"

# --- moto with faults ----------------------------------------------------------------------------


@dataclass
class AwsFault:
    action: str
    code: str
    message: str
    status: int
    times: int


@dataclass
class AwsRewrite:
    action: str
    old: str
    new: str
    times: int


@dataclass
class MotoServer:
    """moto's EC2 API in this process, with fault injection per action."""

    url: str = ""
    faults: list[AwsFault] = field(default_factory=list)
    rewrites: list[AwsRewrite] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: BaseWSGIServer | None = None

    def start(self) -> MotoServer:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", 0, self._middleware(app), True, request_handler=MotoRequestHandler
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail_next(
        self, action: str, code: str, *, status: int = 400, times: int = 1, message: str = ""
    ) -> None:
        """The next ``times`` calls of ``action`` answer with this EC2 error."""
        with self._lock:
            self.faults.append(AwsFault(action, code, message or code, status, times))

    def rewrite_next(self, action: str, old: str, new: str, *, times: int = 1) -> None:
        """Replace ``old`` by ``new`` in the next ``times`` answers to ``action``."""
        with self._lock:
            self.rewrites.append(AwsRewrite(action, old, new, times))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.rewrites.clear()

    def _take(self, items: list[Any], action: str) -> Any:
        with self._lock:
            for item in items:
                if item.action == action and item.times > 0:
                    item.times -= 1
                    if item.times == 0:
                        items.remove(item)
                    return item
        return None

    def _middleware(self, app: Any) -> Callable[..., Iterable[bytes]]:
        def middleware(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            action = urllib.parse.parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
            with self._lock:
                self.calls[action] += 1
            fault: AwsFault | None = self._take(self.faults, action)
            if fault is not None:
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                    f"<Code>{fault.code}</Code><Message>{fault.message}</Message>"
                    f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
                ).encode()
                start_response(
                    f"{fault.status} Injected",
                    [("Content-Type", "text/xml"), ("Content-Length", str(len(xml)))],
                )
                return [xml]
            rewrite: AwsRewrite | None = self._take(self.rewrites, action)
            if rewrite is None:
                return app(environ, start_response)  # type: ignore[no-any-return]
            captured: dict[str, Any] = {}

            def capture(status: str, headers: list[tuple[str, str]], *args: Any) -> None:
                captured["status"], captured["headers"] = status, headers

            answer = b"".join(app(environ, capture)).replace(
                rewrite.old.encode(), rewrite.new.encode()
            )
            headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
            start_response(captured["status"], [*headers, ("Content-Length", str(len(answer)))])
            return [answer]

        return middleware


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> Iterator[MotoServer]:
    """The shared server, with no faults left over from another test."""
    moto_server.clear()
    yield moto_server
    moto_server.clear()


@pytest.fixture(scope="session")
def ec2(moto_server: MotoServer) -> Any:
    """A plain boto3 client on moto: the tests' own view of the IaaS."""
    return boto3.client(
        "ec2",
        region_name=AWS_REGION,
        endpoint_url=moto_server.url,
        aws_access_key_id="inspector",
        aws_secret_access_key="inspector",
    )


@pytest.fixture(scope="session")
def ami(ec2: Any) -> str:
    """One of the AMIs moto ships."""
    return str(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


# Debian's AWS account: the owner of its official AMIs (https://wiki.debian.org/Cloud/AmazonEC2Image).
DEBIAN_OWNER = "136693071363"


@pytest.fixture
def publish_ami(moto_server: MotoServer) -> Iterator[Callable[..., str]]:
    """Publish an AMI under any owner in moto's region (as Debian publishes its own; moto's
    RegisterImage always makes the caller the owner); they are withdrawn after the test."""
    from datetime import datetime

    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami
    from moto.ec2.utils import random_ami_id

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][AWS_REGION]
    published: list[str] = []

    def publish(name: str, *, owner: str, created: str, state: str = "available") -> str:
        ami_id = random_ami_id()
        backend.amis[ami_id] = Ami(
            backend,
            ami_id,
            name=name,
            owner_id=owner,
            public=True,
            architecture="x86_64",
            virtualization_type="hvm",
            state=state,
            creation_date=datetime.fromisoformat(created),
            root_device_type="ebs",
            root_device_name="/dev/xvda",
        )
        published.append(ami_id)
        return ami_id

    yield publish
    for ami_id in published:
        backend.amis.pop(ami_id, None)


def aws_config(
    moto_server: MotoServer,
    scope: str,
    *,
    zone: str = "",
    options: Mapping[str, str] | None = None,
    credentials: Mapping[str, str] | None = None,
) -> ProviderConfig:
    return ProviderConfig(
        type="aws",
        region=AWS_REGION,
        zone=zone,
        endpoint=moto_server.url,
        options={
            "scope": scope,
            "poll_interval": "0.05",
            "wait_timeout": "5",
            "api_attempts": "1",
            **(options or {}),
        },
        credentials=credentials
        or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
    )


def aws_leftovers(ec2: Any, scope: str) -> list[str]:
    scoped = [{"Name": "tag:dockyard.dev/scope", "Values": [scope]}]
    reservations = ec2.describe_instances(
        Filters=[
            *scoped,
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ]
    )["Reservations"]
    found = [f"instance {i['InstanceId']}" for r in reservations for i in r["Instances"]]
    found += [f"volume {v['VolumeId']}" for v in ec2.describe_volumes(Filters=scoped)["Volumes"]]
    return found


# --- the GCE fake --------------------------------------------------------------------------------


@pytest.fixture
def gce_fake() -> Iterator[GCEFake]:
    """A fresh fake per test (a thread and a socket: cheap), so no state or fault leaks."""
    fake = GCEFake(op_delay=0.05, wait_cap=0.5).start()
    yield fake
    fake.stop()


def gce_config(
    fake: GCEFake,
    scope: str,
    *,
    options: Mapping[str, str] | None = None,
    credentials: Mapping[str, str] | None = None,
) -> ProviderConfig:
    return ProviderConfig(
        type="gce",
        zone=GCE_ZONE,
        endpoint=fake.url,
        options={
            "project": GCE_PROJECT,
            "scope": scope,
            "image": GCE_IMAGE,
            "operation_timeout": "5",
            "retry_timeout": "0",
            **(options or {}),
        },
        credentials=credentials or {},
    )


def gce_leftovers(fake: GCEFake) -> list[str]:
    found = [f"instance {i['name']}" for i in fake.all_instances()]
    found += [f"disk {d['name']}" for d in fake.all_disks()]
    return found


# --- one harness per provider for the contract suite ---------------------------------------------


@dataclass
class Harness:
    """A provider under test plus what the contract suite needs around it."""

    name: str
    config: ProviderConfig
    provider: Provider
    reopen: Callable[[], Provider]  # another instance on the same world: an operator restart
    stemcell: str
    unknown_vm_id: str
    unknown_disk_id: str
    metadata_of: Callable[[str], dict[str, str]]  # read back through the IaaS, not the provider
    leftovers: Callable[[], list[str]]
    purge: Callable[[], None]
    # Reads and writes a file on an attached disk from inside the VM; None where the test
    # IaaS has no data plane (moto's volumes and the fake's disks hold no bytes).
    write_file: Callable[[str, Attachment, str, bytes], None] | None = None
    read_file: Callable[[str, Attachment, str], bytes] | None = None
    opened: list[Provider] = field(default_factory=list)

    def another(self) -> Provider:
        provider = self.reopen()
        self.opened.append(provider)
        return provider


def _purge(provider: Provider) -> None:
    for vm in provider.find_vms({}):
        provider.delete_vm(vm.id)
    for disk in provider.find_disks({}):
        provider.delete_disk(disk.id)


def _local_harness(tmp_path: Path) -> Harness:
    try:
        from tests.providers import local_support
    except ImportError as error:  # written by another helper; the suite must run it when there
        pytest.skip(f"tests/providers/local_support.py is not importable yet: {error}")
    root = tmp_path / "local"
    provider = local_support.make_local_provider(root)

    def metadata_of(vm_id: str) -> dict[str, str]:
        return dict(provider.vm_metadata(vm_id))

    return Harness(
        name="local",
        config=ProviderConfig(type="local", options={"root": str(root)}),
        provider=provider,
        reopen=lambda: local_support.make_local_provider(root),
        stemcell="",
        unknown_vm_id="dyvm-000000000000",
        unknown_disk_id="dydisk-000000000000",
        metadata_of=metadata_of,
        leftovers=lambda: local_support.local_leftovers(provider),
        purge=lambda: local_support.purge_local(provider),
        write_file=lambda vm, att, rel, data: local_support.write_file_on_disk(
            provider, vm, att, rel, data
        ),
        read_file=lambda vm, att, rel: local_support.read_file_on_disk(provider, vm, att, rel),
    )


def _aws_harness(moto_server: MotoServer, ec2: Any, ami: str) -> Harness:
    from dockyard.providers.aws import AWSProvider

    scope = f"t-{uuid.uuid4().hex[:10]}"
    config = aws_config(moto_server, scope)
    provider = AWSProvider(config)

    def metadata_of(vm_id: str) -> dict[str, str]:
        reservations = ec2.describe_instances(InstanceIds=[vm_id])["Reservations"]
        tags = {t["Key"]: t["Value"] for t in reservations[0]["Instances"][0].get("Tags", [])}
        prefix = "dockyard-metadata/"
        return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}

    return Harness(
        name="aws",
        config=config,
        provider=provider,
        reopen=lambda: AWSProvider(config),
        stemcell=ami,
        unknown_vm_id="i-0123456789abcdef0",
        unknown_disk_id="vol-0123456789abcdef0",
        metadata_of=metadata_of,
        leftovers=lambda: aws_leftovers(ec2, scope),
        purge=lambda: _purge(provider),
    )


def _gce_harness(fake: GCEFake) -> Harness:
    from dockyard.providers.gce import GCEProvider

    # min_disk_gb=1: sizes behave as on the other providers (the 10 GB floor has its own test).
    config = gce_config(fake, f"t-{uuid.uuid4().hex[:10]}", options={"min_disk_gb": "1"})
    provider = GCEProvider(config)

    def metadata_of(vm_id: str) -> dict[str, str]:
        (instance,) = [i for i in fake.all_instances() if i["name"] == vm_id]
        return {item["key"]: item["value"] for item in instance["metadata"].get("items", [])}

    return Harness(
        name="gce",
        config=config,
        provider=provider,
        reopen=lambda: GCEProvider(config),
        stemcell=GCE_IMAGE,
        unknown_vm_id="dockyard-vm-00000000000000000000",
        unknown_disk_id="dockyard-disk-00000000000000000000",
        metadata_of=metadata_of,
        leftovers=lambda: gce_leftovers(fake),
        purge=lambda: _purge(provider),
    )


@pytest.fixture(params=["local", "aws", "gce"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each provider in turn; after the test, nothing of it may be left (then it is purged
    anyway, so one failure does not cascade)."""
    if request.param == "local":
        built = _local_harness(tmp_path)
    elif request.param == "aws":
        moto_server = request.getfixturevalue("moto")
        built = _aws_harness(
            moto_server, request.getfixturevalue("ec2"), request.getfixturevalue("ami")
        )
    else:
        built = _gce_harness(request.getfixturevalue("gce_fake"))
    try:
        yield built
        leftovers = built.leftovers()
    finally:
        try:
            built.purge()
        finally:
            for provider in [built.provider, *built.opened]:
                provider.close()
    assert leftovers == [], f"{built.name} left resources behind: {leftovers}"
