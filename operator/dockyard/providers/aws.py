"""AWSProvider: VMs are EC2 instances, persistent disks are EBS volumes (boto3).

Stemcells: an AMI id, or the name of a stock image (``debian-12``: the newest of Debian's own
AMIs in the region, found with DescribeImages). With the operator's engine CA, every new VM gets
user data (cloud-init, ``bootstrap.py``) with a server certificate of its own; it is PENDING
until its engine answers with that certificate (``dockyard-engine/ready`` is then tagged), or
until ``boot_timeout`` has passed.

Identity is the tag set: every resource carries ``dockyard.dev/<key>`` tags plus
``dockyard.dev/scope`` (one operator installation), and each create looks its tags up first.
``ClientToken`` is not used: EC2 keeps a token for hours after the instance is terminated, so a
VM recreated with the same identity (resurrection) would get the dead instance back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import boto3
import botocore.config
import botocore.exceptions
import docker

from dockyard.providers import bootstrap
from dockyard.providers.base import (
    VM,
    Attachment,
    Disk,
    DiskSpec,
    NotFoundError,
    PermanentError,
    ProviderConfig,
    ProviderError,
    ShrinkRefusedError,
    Snapshot,
    TransientError,
    VMSpec,
    VMState,
)
from dockyard.providers.dockertls import (
    DEFAULT_PORT,
    DockerTLS,
    map_probing,
)
from dockyard.providers.options import (
    check_known,
    option_bool,
    option_float,
    option_int,
    option_list,
    option_str,
    required,
)
from dockyard.providers.redaction import protect, protected

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        InstanceTypeDef,
        TagSpecificationTypeDef,
        TagTypeDef,
        VolumeModificationTypeDef,
        VolumeTypeDef,
        WaiterConfigTypeDef,
    )

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "dockyard.dev/"
SCOPE_TAG = PREFIX + "scope"
METADATA_PREFIX = "dockyard-metadata/"
# The VM's engine certificate: the name it is made for, the CA it is of, and when it answered.
ENGINE_NAME_TAG = "dockyard-engine/name"
ENGINE_CA_TAG = "dockyard-engine/ca"
ENGINE_READY_TAG = "dockyard-engine/ready"
IMAGE_CACHE_SECONDS = 3600.0
DEFAULT_INSTANCE_TYPE = "t3.small"
DEFAULT_VOLUME_TYPE = "gp3"
# AWS's advice for EBS data volumes on Linux: /dev/sd[f-p].
DEVICE_NAMES = tuple(f"/dev/sd{letter}" for letter in "fghijklmnop")
EBS_MODIFICATION_COOLDOWN = 6 * 3600.0
OPTIONS = frozenset(
    {
        "scope",
        "image_id",
        "instance_type",
        "volume_type",
        "subnet_id",
        "security_group_ids",
        "key_name",
        "iam_instance_profile",
        "encrypted",
        "kms_key_id",
        "min_volume_gib",
        "wait_timeout",
        "poll_interval",
        "docker_port",
        "docker_api_version",
        "api_attempts",
        "connect_timeout",
        "read_timeout",
        "boot_timeout",
    }
)

_STATES: dict[str, VMState] = {
    "pending": VMState.PENDING,
    "running": VMState.RUNNING,
    "stopping": VMState.STOPPED,
    "stopped": VMState.STOPPED,
    "shutting-down": VMState.MISSING,
    "terminated": VMState.MISSING,
}
_EPOCH = datetime.fromtimestamp(0, UTC)
_LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
_LIVE_VOLUME_STATES = ["creating", "available", "in-use", "error"]
_ATTACHED = ("attaching", "attached", "busy", "detaching")

_NOT_FOUND = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidInstanceID.Malformed",
        "InvalidVolume.NotFound",
        "InvalidVolumeID.Malformed",
        "InvalidVolume.Malformed",
        "InvalidSnapshot.NotFound",
        "InvalidSnapshotID.Malformed",
    }
)
# code -> seconds worth waiting before the next try
_TRANSIENT: dict[str, float] = {
    # throttling
    "RequestLimitExceeded": 5.0,
    "Throttling": 5.0,
    "ThrottlingException": 5.0,
    "RequestThrottled": 5.0,
    # capacity
    "InsufficientInstanceCapacity": 60.0,
    "InsufficientVolumeCapacity": 60.0,
    "InsufficientAddressCapacity": 60.0,
    "InsufficientHostCapacity": 60.0,
    "InsufficientFreeAddressesInSubnet": 60.0,
    "Unavailable": 30.0,
    "ServiceUnavailable": 30.0,
    "InternalError": 30.0,
    "InternalFailure": 30.0,
    # quotas: someone has to raise them or free capacity; try again in a while
    "InstanceLimitExceeded": 300.0,
    "VcpuLimitExceeded": 300.0,
    "VolumeLimitExceeded": 300.0,
    "MaxIOPSLimitExceeded": 300.0,
    "AttachmentLimitExceeded": 300.0,
    "ResourceLimitExceeded": 300.0,
    # the resource is busy with something else
    "IncorrectState": 15.0,
    "IncorrectInstanceState": 15.0,
    "VolumeInUse": 15.0,
    "IncorrectModificationState": 60.0,
    "VolumeModificationRateExceeded": EBS_MODIFICATION_COOLDOWN,
}


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def map_client_error(error: botocore.exceptions.ClientError, what: str) -> ProviderError:
    """A botocore ClientError as the contract's typed error."""
    code = _code(error)
    message = f"{what}: {code or 'error'}: {error.response.get('Error', {}).get('Message', '')}"
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _NOT_FOUND:
        return NotFoundError(message)
    if code in _TRANSIENT:
        return TransientError(message, retry_after=_TRANSIENT[code])
    if status >= 500 or status == 429:
        return TransientError(message, retry_after=30.0)
    return PermanentError(message)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except ProviderError:
        raise
    except botocore.exceptions.ClientError as error:
        raise map_client_error(error, what) from error
    except botocore.exceptions.WaiterError as error:
        raise TransientError(f"{what}: {error}", retry_after=15.0) from error
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
        raise PermanentError(
            f"{what}: no AWS credentials: set credentials.aws_access_key_id and "
            "credentials.aws_secret_access_key, or give the operator an IAM role"
        ) from None
    except (
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
    ) as error:
        raise TransientError(f"{what}: cannot reach EC2: {error}", retry_after=10.0) from error


class AWSProvider:
    resizes_attached_disks = True
    mounts_disks = False
    withheld_capabilities: frozenset[str] = frozenset()

    def __init__(self, config: ProviderConfig) -> None:
        check_known(config, OPTIONS)
        self.region = required(
            config.region, "spec.provider.region", "the AWS region, e.g. eu-west-1"
        )
        self.zone = config.zone or f"{self.region}a"
        self.endpoint = config.endpoint
        self.scope = option_str(config, "scope", "default")
        self.image_id = option_str(config, "image_id")
        self.instance_type = option_str(config, "instance_type", DEFAULT_INSTANCE_TYPE)
        self.volume_type = option_str(config, "volume_type", DEFAULT_VOLUME_TYPE)
        self.subnet_id = option_str(config, "subnet_id")
        self.security_group_ids = option_list(config, "security_group_ids")
        self.key_name = option_str(config, "key_name")
        self.iam_instance_profile = option_str(config, "iam_instance_profile")
        self.encrypted = option_bool(config, "encrypted", True)
        self.kms_key_id = option_str(config, "kms_key_id")
        self.min_volume_gib = option_int(config, "min_volume_gib", 1, minimum=1)
        self.wait_timeout = option_float(config, "wait_timeout", 300.0, minimum=0.1)
        self.poll_interval = option_float(config, "poll_interval", 2.0, minimum=0.01)
        self.boot_timeout = option_float(config, "boot_timeout", 900.0, minimum=1.0)
        self._images: dict[str, tuple[float, str]] = {}  # stock name -> (looked up at, AMI)
        self._tls = DockerTLS(
            config.credentials,
            port=option_int(config, "docker_port", DEFAULT_PORT, minimum=1),
            api_version=option_str(config, "docker_api_version", "1.41"),
        )
        self._lock = threading.RLock()

        key_id = config.credentials.get("aws_access_key_id", "")
        secret = config.credentials.get("aws_secret_access_key", "")
        token = config.credentials.get("aws_session_token", "")
        if bool(key_id) != bool(secret):
            missing = "aws_secret_access_key" if key_id else "aws_access_key_id"
            raise PermanentError(
                f"credentials.{missing}: required together with its pair "
                "(or give neither and let the operator use its IAM role)"
            )
        protect(v for v in config.credentials.values() if v)
        session = boto3.session.Session(
            aws_access_key_id=key_id or None,
            aws_secret_access_key=secret or None,
            aws_session_token=token or None,
            region_name=self.region,
        )
        botocore_config = botocore.config.Config(
            retries={
                "total_max_attempts": option_int(config, "api_attempts", 5, minimum=1),
                "mode": "standard",
            },
            connect_timeout=option_float(config, "connect_timeout", 10.0, minimum=0.1),
            read_timeout=option_float(config, "read_timeout", 60.0, minimum=0.1),
            user_agent_extra="dockyard",
        )
        self.ec2: EC2Client = session.client(
            "ec2", endpoint_url=self.endpoint or None, config=botocore_config
        )
        # botocore creates its loggers on import: mask again now that they all exist.
        protect(v for v in config.credentials.values() if v)

    @property
    def vm_config_salt(self) -> str:
        """What VMs are made from besides stemcell and machine type: the engine CA. A new CA
        rolls every VM like a new stemcell (canaries first), each getting a certificate of it;
        until then the old ones are reached with the previous CA."""
        return f"engine-ca {self._tls.ca_fingerprint}" if self._tls.issuing else ""

    def __repr__(self) -> str:
        return (
            f"AWSProvider(region={self.region!r}, zone={self.zone!r}, "
            f"endpoint={self.endpoint!r}, scope={self.scope!r})"
        )

    # --- tags ----------------------------------------------------------------------------------

    def _tag_dict(self, tags: Mapping[str, str]) -> dict[str, str]:
        result = {SCOPE_TAG: self.scope}
        for key, value in tags.items():
            full = PREFIX + key
            if not key or len(full) > 128:
                raise PermanentError(f"tag {key!r}: EC2 tag keys are 1-128 characters")
            if len(value) > 256:
                raise PermanentError(f"tag {key!r}: EC2 tag values are at most 256 characters")
            result[full] = value
        return result

    @staticmethod
    def _tag_list(tags: Mapping[str, str]) -> list[TagTypeDef]:
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def _filters(self, tags: Mapping[str, str]) -> list[FilterTypeDef]:
        # EC2 filter values are wildcard patterns: escape them to match literally.
        def literal(value: str) -> str:
            return value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")

        return [
            {"Name": f"tag:{k}", "Values": [literal(v)]} for k, v in self._tag_dict(tags).items()
        ]

    @staticmethod
    def _tags_of(resource_tags: list[TagTypeDef] | None) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in resource_tags or []}

    def _ours(self, resource_tags: list[TagTypeDef] | None) -> bool:
        return self._tags_of(resource_tags).get(SCOPE_TAG) == self.scope

    @staticmethod
    def _logical(tags: Mapping[str, str]) -> dict[str, str]:
        return {
            k[len(PREFIX) :]: v for k, v in tags.items() if k.startswith(PREFIX) and k != SCOPE_TAG
        }

    # --- waiting -------------------------------------------------------------------------------

    def _waiter_config(self) -> WaiterConfigTypeDef:
        # botocore sleeps Delay seconds with time.sleep: a float works (the stubs say int).
        return cast(
            "WaiterConfigTypeDef",
            {
                "Delay": self.poll_interval,
                "MaxAttempts": max(1, math.ceil(self.wait_timeout / self.poll_interval)),
            },
        )

    def _poll(self, what: str, probe: Callable[[], T | None], retry_after: float = 30.0) -> T:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            result = probe()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"{what}: still in progress after {self.wait_timeout:g}s",
                    retry_after=retry_after,
                )
            time.sleep(self.poll_interval)

    # --- VMs -----------------------------------------------------------------------------------

    def _vm(self, instance: InstanceTypeDef, *, probe: bool = True) -> VM:
        state = _STATES.get(instance["State"]["Name"], VMState.STOPPED)
        if state is VMState.RUNNING and not self._booted(instance, probe):
            state = VMState.PENDING
        return VM(
            id=instance["InstanceId"],
            state=state,
            tags=self._logical(self._tags_of(instance.get("Tags"))),
            address=instance.get("PrivateIpAddress") or None,
        )

    def _booted(self, instance: InstanceTypeDef, probe: bool) -> bool:
        """A running VM made with user data is up once its engine answers with its own
        certificate (then tagged ready, and never asked again), or once ``boot_timeout`` has
        passed (its silent engine is then the runtime's business: it replaces the VM)."""
        tags = self._tags_of(instance.get("Tags"))
        name = tags.get(ENGINE_NAME_TAG)
        if not name or tags.get(ENGINE_READY_TAG):
            return True
        launched = instance.get("LaunchTime", _EPOCH)
        if (datetime.now(UTC) - launched).total_seconds() >= self.boot_timeout:
            return True
        address = instance.get("PrivateIpAddress")
        if not probe or not address:
            return False
        if not self._tls.answers(address, name, tags.get(ENGINE_CA_TAG, "")):
            return False
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with _translated(f"marking VM {instance['InstanceId']} ready"):
            self.ec2.create_tags(
                Resources=[instance["InstanceId"]], Tags=[{"Key": ENGINE_READY_TAG, "Value": now}]
            )
        log.info("VM %s: its engine answers (booted)", instance["InstanceId"])
        return True

    def _instance(self, vm_id: str, *, live: bool = True) -> InstanceTypeDef:
        with _translated(f"describing VM {vm_id}"):
            reservations = self.ec2.describe_instances(InstanceIds=[vm_id])["Reservations"]
        instances = [i for r in reservations for i in r.get("Instances", [])]
        if not instances or not self._ours(instances[0].get("Tags")):
            raise NotFoundError(f"VM {vm_id} does not exist")
        instance = instances[0]
        if live and _STATES.get(instance["State"]["Name"]) is VMState.MISSING:
            raise NotFoundError(f"VM {vm_id} is {instance['State']['Name']}")
        return instance

    def find_vms(self, tags: Mapping[str, str], *, probe: bool = True) -> list[VM]:
        wanted = self._tag_dict(tags)
        filters: list[FilterTypeDef] = [
            *self._filters(tags),
            {"Name": "instance-state-name", "Values": _LIVE_INSTANCE_STATES},
        ]
        found: list[InstanceTypeDef] = []
        with _translated("listing VMs"):
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    found.extend(reservation.get("Instances", []))
        matching = [i for i in found if wanted.items() <= self._tags_of(i.get("Tags")).items()]
        matching.sort(key=lambda i: (i.get("LaunchTime", _EPOCH), i["InstanceId"]))
        probing = self._probing if probe else lambda _: False
        return map_probing(matching, probing, lambda i: self._vm(i, probe=probe))

    def _probing(self, instance: InstanceTypeDef) -> bool:
        tags = self._tags_of(instance.get("Tags"))
        running = instance["State"]["Name"] == "running"
        return running and ENGINE_NAME_TAG in tags and ENGINE_READY_TAG not in tags

    def _stock_ami(self, image: bootstrap.StockImage) -> str:
        """The newest available AMI of a stock image in the region (looked up once an hour)."""
        with self._lock:
            cached = self._images.get(image.name)
            if cached is not None and time.monotonic() - cached[0] < IMAGE_CACHE_SECONDS:
                return cached[1]
        with _translated(f"looking up the stock image {image.name}"):
            found = self.ec2.describe_images(
                Owners=[image.aws_owner],
                Filters=[
                    {"Name": "name", "Values": [image.aws_name_pattern]},
                    {"Name": "state", "Values": ["available"]},
                ],
            )["Images"]
        if not found:
            raise PermanentError(
                f"stemcell {image.name}: no image {image.aws_name_pattern} of owner "
                f"{image.aws_owner} in {self.region}"
            )
        newest = max(found, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))
        with self._lock:
            self._images[image.name] = (time.monotonic(), newest["ImageId"])
        return newest["ImageId"]

    def _image(self, stemcell: str) -> tuple[str, bool]:
        """The AMI to boot and whether it is a stock image."""
        name = stemcell or self.image_id
        if not name and self._tls.issuing:
            name = bootstrap.DEFAULT_STOCK
        name = required(
            name,
            "spec.provider.options.image_id",
            "an AMI, or a stock image such as debian-12, unless the Deployment names its stemcell",
        )
        stock = bootstrap.stock_image(name)
        if stock is None:
            return name, False
        if not self._tls.issuing:
            self._tls.issue_for_vm()  # raises: a stock image needs the engine CA
        return self._stock_ami(stock), True

    def create_vm(self, spec: VMSpec) -> VM:
        tags = self._tag_dict(spec.tags)
        image, _ = self._image(spec.stemcell)
        all_tags = {
            **tags,
            **self._metadata_tags(spec.metadata),
            "Name": "-".join(["dockyard", *(v for v in spec.tags.values() if v)])[:255],
        }
        request: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": spec.machine_type or self.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": self._tag_list(all_tags)}],
            # IMDSv2 only, one hop: containers behind the VM's bridge cannot read its user data.
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        }
        secrets: list[str] = []
        if self._tls.issuing:
            boot = self._tls.boot_for_vm(bootstrap.EC2_USER_DATA_LIMIT)
            all_tags[ENGINE_NAME_TAG] = boot.certificate.name
            all_tags[ENGINE_CA_TAG] = boot.certificate.ca_fingerprint
            request["TagSpecifications"][0]["Tags"] = self._tag_list(all_tags)
            secrets = boot.secrets
            request["UserData"] = boot.user_data  # boto3 base64-encodes it
        if self.subnet_id:
            request["SubnetId"] = self.subnet_id
        else:
            request["Placement"] = {"AvailabilityZone": self.zone}
        if self.security_group_ids:
            request["SecurityGroupIds"] = self.security_group_ids
        if self.key_name:
            request["KeyName"] = self.key_name
        if self.iam_instance_profile:
            request["IamInstanceProfile"] = {"Name": self.iam_instance_profile}
        with self._lock:
            existing = self.find_vms(spec.tags, probe=False)
            if existing:
                return existing[0]
            with _translated("creating VM"), protected(secrets):
                instance = self.ec2.run_instances(**request)["Instances"][0]
            log.info("created EC2 instance %s", instance["InstanceId"])
            return self._vm(instance, probe=False)

    def delete_vm(self, vm_id: str) -> None:
        with self._lock:
            try:
                instance = self._instance(vm_id, live=False)
            except NotFoundError:
                return
            if _STATES.get(instance["State"]["Name"]) is VMState.MISSING:
                return
            try:
                with _translated(f"deleting VM {vm_id}"):
                    self.ec2.terminate_instances(InstanceIds=[vm_id])
            except NotFoundError:
                return
            log.info("terminated EC2 instance %s", vm_id)

    def vm_state(self, vm_id: str) -> VMState:
        try:
            instance = self._instance(vm_id, live=False)
        except NotFoundError:
            return VMState.MISSING
        return self._vm(instance).state

    @staticmethod
    def _metadata_tags(metadata: Mapping[str, str]) -> dict[str, str]:
        result = {}
        for key, value in metadata.items():
            full = METADATA_PREFIX + key
            if not key or len(full) > 128 or len(value) > 256:
                raise PermanentError(
                    f"metadata {key!r}: EC2 keeps VM metadata in tags (keys up to "
                    f"{128 - len(METADATA_PREFIX)} characters, values up to 256)"
                )
            result[full] = value
        return result

    def set_vm_metadata(self, vm_id: str, metadata: Mapping[str, str]) -> None:
        tags = self._metadata_tags(metadata)
        self._instance(vm_id)
        if tags:
            with _translated(f"setting metadata of VM {vm_id}"):
                self.ec2.create_tags(Resources=[vm_id], Tags=self._tag_list(tags))

    def docker_client(self, vm_id: str) -> docker.DockerClient:
        instance = self._instance(vm_id)
        address = instance.get("PrivateIpAddress")
        if not address:
            raise TransientError(f"VM {vm_id} has no private address yet", retry_after=5.0)
        tags = self._tags_of(instance.get("Tags"))
        return self._tls.client(
            address,
            engine_name=tags.get(ENGINE_NAME_TAG, ""),
            ca_fingerprint=tags.get(ENGINE_CA_TAG, ""),
        )

    # --- disks ---------------------------------------------------------------------------------

    def _gib(self, size_mib: int) -> int:
        if size_mib <= 0:
            raise PermanentError(f"size_mib: must be a positive integer, got {size_mib!r}")
        return max(self.min_volume_gib, math.ceil(size_mib / 1024))

    def _disk(self, volume: VolumeTypeDef, size_gib: int | None = None) -> Disk:
        attached = [a for a in volume.get("Attachments", []) if a.get("State") in _ATTACHED]
        return Disk(
            id=volume["VolumeId"],
            size_mib=max(size_gib or 0, volume["Size"]) * 1024,
            tags=self._logical(self._tags_of(volume.get("Tags"))),
            attached_to=attached[0].get("InstanceId") if attached else None,
            disk_type=volume.get("VolumeType", ""),
        )

    def _volume(self, disk_id: str) -> VolumeTypeDef:
        with _translated(f"describing disk {disk_id}"):
            volumes = self.ec2.describe_volumes(VolumeIds=[disk_id])["Volumes"]
        if (
            not volumes
            or not self._ours(volumes[0].get("Tags"))
            or volumes[0]["State"] in ("deleting", "deleted")
        ):
            raise NotFoundError(f"disk {disk_id} does not exist")
        return volumes[0]

    def find_disks(self, tags: Mapping[str, str]) -> list[Disk]:
        wanted = self._tag_dict(tags)
        filters: list[FilterTypeDef] = [
            *self._filters(tags),
            {"Name": "status", "Values": _LIVE_VOLUME_STATES},
        ]
        found: list[VolumeTypeDef] = []
        with _translated("listing disks"):
            for page in self.ec2.get_paginator("describe_volumes").paginate(Filters=filters):
                found.extend(page["Volumes"])
        matching = [v for v in found if wanted.items() <= self._tags_of(v.get("Tags")).items()]
        matching.sort(key=lambda v: (v.get("CreateTime", _EPOCH), v["VolumeId"]))
        return [self._disk(v) for v in matching]

    def set_disk_metadata(self, disk_id: str, tags: Mapping[str, str | None]) -> Disk:
        self._volume(disk_id)  # ours, and there
        kept = self._tag_dict({k: v for k, v in tags.items() if v is not None})
        gone = set(self._tag_dict({k: "" for k, v in tags.items() if v is None})) - {SCOPE_TAG}
        with _translated(f"tagging disk {disk_id}"):
            if kept:
                self.ec2.create_tags(Resources=[disk_id], Tags=self._tag_list(kept))
            if gone:
                self.ec2.delete_tags(Resources=[disk_id], Tags=[{"Key": k} for k in gone])
        return self._disk(self._volume(disk_id))

    def create_disk(self, spec: DiskSpec) -> Disk:
        request: dict[str, Any] = {
            "AvailabilityZone": self.zone,
            "Size": self._gib(spec.size_mib),
            "VolumeType": spec.disk_type or self.volume_type,
            "Encrypted": self.encrypted,
            "TagSpecifications": [
                {"ResourceType": "volume", "Tags": self._tag_list(self._tag_dict(spec.tags))}
            ],
        }
        if self.kms_key_id:
            request["KmsKeyId"] = self.kms_key_id
        if spec.snapshot:
            snapshot = self._ec2_snapshot(spec.snapshot)
            if int(snapshot["VolumeSize"]) * 1024 > spec.size_mib:
                raise PermanentError(
                    f"size: {spec.size_mib} MiB is smaller than snapshot {spec.snapshot} "
                    f"({snapshot['VolumeSize']} GiB)"
                )
            request["SnapshotId"] = spec.snapshot
        with self._lock:
            existing = self.find_disks(spec.tags)
            if existing:
                return existing[0]
            with _translated("creating disk"):
                volume = self.ec2.create_volume(**request)
            log.info("created EBS volume %s (%s GiB)", volume["VolumeId"], volume["Size"])
            return self._disk(volume)  # type: ignore[arg-type]  # same shape as a described one

    # --- snapshots -----------------------------------------------------------------------------

    def _ec2_snapshot(self, snapshot_id: str) -> Any:
        with _translated(f"describing snapshot {snapshot_id}"):
            found = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id], OwnerIds=["self"])
        snapshots = found["Snapshots"]
        if not snapshots or not self._ours(snapshots[0].get("Tags")):
            raise NotFoundError(f"snapshot {snapshot_id} does not exist")
        return snapshots[0]

    def _snapshot(self, snapshot: Any) -> Snapshot:
        return Snapshot(
            id=snapshot["SnapshotId"],
            disk_id=snapshot.get("VolumeId", ""),
            size_mib=int(snapshot["VolumeSize"]) * 1024,
            tags=self._logical(self._tags_of(snapshot.get("Tags"))),
            ready=snapshot.get("State") == "completed",
        )

    def find_snapshots(self, tags: Mapping[str, str]) -> list[Snapshot]:
        wanted = self._tag_dict(tags)
        with _translated("listing snapshots"):
            found = self.ec2.describe_snapshots(OwnerIds=["self"], Filters=self._filters(tags))
        return [
            self._snapshot(s)
            for s in found["Snapshots"]
            if wanted.items() <= self._tags_of(s.get("Tags")).items()
        ]

    def snapshot_disk(self, disk_id: str, tags: Mapping[str, str]) -> Snapshot:
        with self._lock:
            existing = self.find_snapshots(tags)
            if existing:
                return existing[0]
            self._volume(disk_id)
            spec: list[TagSpecificationTypeDef] = [
                {"ResourceType": "snapshot", "Tags": self._tag_list(self._tag_dict(tags))}
            ]
            with _translated(f"snapshotting disk {disk_id}"):
                made = self.ec2.create_snapshot(VolumeId=disk_id, TagSpecifications=spec)
            return self._snapshot(made)

    def delete_snapshot(self, snapshot_id: str) -> None:
        try:
            self._ec2_snapshot(snapshot_id)
        except NotFoundError:
            return
        with _translated(f"deleting snapshot {snapshot_id}"):
            self.ec2.delete_snapshot(SnapshotId=snapshot_id)

    def _wait_available(self, disk_id: str) -> None:
        with _translated(f"waiting for disk {disk_id} to be available"):
            self.ec2.get_waiter("volume_available").wait(
                VolumeIds=[disk_id], WaiterConfig=self._waiter_config()
            )

    def attach_disk(self, vm_id: str, disk_id: str) -> Attachment:
        with self._lock:
            volume = self._volume(disk_id)
            for attachment in volume.get("Attachments", []):
                if attachment.get("State") not in _ATTACHED:
                    continue
                if attachment.get("InstanceId") == vm_id and attachment.get("State") in (
                    "attaching",
                    "attached",
                    "busy",
                ):
                    self._wait_attached(vm_id, disk_id)
                    return Attachment(
                        device=attachment.get("Device", ""), serial=_nvme_serial(disk_id)
                    )
                raise TransientError(
                    f"disk {disk_id} is attached to VM {attachment.get('InstanceId')}; "
                    "detach it first",
                    retry_after=15.0,
                )
            instance = self._instance(vm_id)
            zone = instance.get("Placement", {}).get("AvailabilityZone")
            if zone and zone != volume["AvailabilityZone"]:
                raise PermanentError(
                    f"disk {disk_id} is in {volume['AvailabilityZone']} and VM {vm_id} in {zone}: "
                    "EBS volumes attach only within their availability zone"
                )
            if volume["State"] == "creating":
                self._wait_available(disk_id)
            used = {m.get("DeviceName") for m in instance.get("BlockDeviceMappings", [])}
            free = [d for d in DEVICE_NAMES if d not in used]
            if not free:
                raise PermanentError(f"VM {vm_id} has no free device name for another disk")
            with _translated(f"attaching disk {disk_id} to VM {vm_id}"):
                self.ec2.attach_volume(Device=free[0], InstanceId=vm_id, VolumeId=disk_id)
            self._wait_attached(vm_id, disk_id)
            log.info("attached EBS volume %s to %s as %s", disk_id, vm_id, free[0])
            return Attachment(device=free[0], serial=_nvme_serial(disk_id))

    def _wait_attached(self, vm_id: str, disk_id: str) -> None:
        with _translated(f"waiting for disk {disk_id} to attach to VM {vm_id}"):
            self.ec2.get_waiter("volume_in_use").wait(
                VolumeIds=[disk_id],
                Filters=[
                    {"Name": "attachment.instance-id", "Values": [vm_id]},
                    {"Name": "attachment.status", "Values": ["attached"]},
                ],
                WaiterConfig=self._waiter_config(),
            )

    def _detach(self, volume: VolumeTypeDef) -> None:
        disk_id = volume["VolumeId"]
        for attachment in volume.get("Attachments", []):
            if attachment.get("State") in ("attaching", "attached", "busy"):
                try:
                    with _translated(f"detaching disk {disk_id}"):
                        self.ec2.detach_volume(
                            VolumeId=disk_id,
                            InstanceId=attachment.get("InstanceId", ""),
                            Device=attachment.get("Device", ""),
                        )
                except PermanentError as error:
                    # Already detached meanwhile (IncorrectState is transient; this is the rest).
                    if "InvalidAttachment.NotFound" not in str(error):
                        raise
        if any(a.get("State") in _ATTACHED for a in volume.get("Attachments", [])):
            self._wait_available(disk_id)

    def detach_disk(self, vm_id: str, disk_id: str) -> None:
        with self._lock:
            volume = self._volume(disk_id)
            mine = [a for a in volume.get("Attachments", []) if a.get("InstanceId") == vm_id]
            if not any(a.get("State") in _ATTACHED for a in mine):
                return
            self._detach({**volume, "Attachments": mine})
            log.info("detached EBS volume %s from %s", disk_id, vm_id)

    def _latest_modification(self, disk_id: str) -> VolumeModificationTypeDef | None:
        try:
            with _translated(f"describing modifications of disk {disk_id}"):
                found = self.ec2.describe_volumes_modifications(VolumeIds=[disk_id])
        except PermanentError as error:
            if "InvalidVolumeModification.NotFound" in str(error):  # never modified
                return None
            raise
        modifications = found.get("VolumesModifications", [])
        if not modifications:
            return None
        return max(modifications, key=lambda m: m.get("StartTime", _EPOCH))

    def _wait_modified(self, disk_id: str, target_gib: int) -> None:
        """Until the new size is usable: EBS reports 'optimizing' once the volume has grown."""

        def grown() -> bool | None:
            latest = self._latest_modification(disk_id)
            if latest is None or latest.get("ModificationState") in ("optimizing", "completed"):
                return True
            if latest.get("ModificationState") == "failed":
                raise PermanentError(
                    f"growing disk {disk_id} to {target_gib} GiB failed: "
                    f"{latest.get('StatusMessage', 'no reason given')}"
                )
            return None

        self._poll(f"growing disk {disk_id} to {target_gib} GiB", grown, retry_after=30.0)

    def _cooldown_left(self, latest: VolumeModificationTypeDef | None) -> float:
        if latest is None or "StartTime" not in latest:
            return EBS_MODIFICATION_COOLDOWN
        since = (datetime.now(UTC) - latest["StartTime"]).total_seconds()
        return max(60.0, EBS_MODIFICATION_COOLDOWN - since)

    def resize_disk(self, disk_id: str, size_mib: int) -> Disk:
        target = self._gib(size_mib)
        with self._lock:
            volume = self._volume(disk_id)
            current = volume["Size"]
            if target < current:
                raise ShrinkRefusedError(
                    f"disk {disk_id} is {current} GiB; it never shrinks to {target} GiB"
                )
            latest = self._latest_modification(disk_id)
            if latest is not None and latest.get("ModificationState") == "modifying":
                if latest.get("TargetSize", 0) >= target:
                    self._wait_modified(disk_id, target)
                    return self._disk(self._volume(disk_id), max(current, latest["TargetSize"]))
                raise TransientError(
                    f"disk {disk_id} is being modified to {latest.get('TargetSize')} GiB; "
                    f"growing it to {target} GiB must wait",
                    retry_after=60.0,
                )
            if target == current:
                return self._disk(volume)
            try:
                with _translated(f"growing disk {disk_id} to {target} GiB"):
                    self.ec2.modify_volume(VolumeId=disk_id, Size=target)
            except TransientError as error:
                if "VolumeModificationRateExceeded" in str(error):
                    error.retry_after = self._cooldown_left(latest)
                raise
            log.info("growing EBS volume %s from %s to %s GiB", disk_id, current, target)
            self._wait_modified(disk_id, target)
            return self._disk(self._volume(disk_id), max(current, target))

    def delete_disk(self, disk_id: str) -> None:
        with self._lock:
            try:
                volume = self._volume(disk_id)
            except NotFoundError:
                return
            self._detach(volume)
            try:
                with _translated(f"deleting disk {disk_id}"):
                    self.ec2.delete_volume(VolumeId=disk_id)
            except NotFoundError:
                return
            log.info("deleted EBS volume %s", disk_id)

    def close(self) -> None:
        self._tls.close()
        self.ec2.close()


def _nvme_serial(volume_id: str) -> str:
    """How a Nitro instance names an EBS volume in /dev/disk/by-id: its id without the dash
    (``nvme-Amazon_Elastic_Block_Store_vol0123…``)."""
    return volume_id.replace("-", "")
