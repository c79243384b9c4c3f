"""GCEProvider: VMs are Compute Engine instances, persistent disks are zonal persistent disks
(google-cloud-compute, REST transport).

Identity: resources carry labels ``dockyard-<key>`` (GCE label rules: lower-case letters,
digits, ``-`` and ``_``, at most 63 characters) plus ``dockyard-scope``; the original tags are
kept verbatim in the instance metadata item ``dockyard-tags`` and in the disk description. Names
are derived from the identity, inserts carry a ``requestId`` (uuid5 of the identity) and every
create looks its labels up first, so a retried create never makes a second resource.

Stemcells: an image URL, or the name of a stock image (``debian-12``: the family's newest image
in ``debian-cloud``). With the operator's engine CA, every new VM gets user data (the metadata item
``user-data``, cloud-init; ``bootstrap.py``) with a server certificate of its own; it is PENDING
until its engine answers with that certificate (``dockyard-engine-ready`` is then set), or until
``boot_timeout`` has passed.

Operations are awaited with our own ZoneOperationsClient (``wait`` in a loop with a deadline):
``ExtendedOperation.result()`` polls through a client that ignores a custom endpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import google.auth.exceptions
import requests.exceptions
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1
from google.oauth2 import service_account

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
    option_float,
    option_int,
    option_str,
    required,
)
from dockyard.providers.redaction import protect, protected

log = logging.getLogger(__name__)
T = TypeVar("T")

LABEL_PREFIX = "dockyard-"
SCOPE_LABEL = LABEL_PREFIX + "scope"
TAGS_METADATA_KEY = "dockyard-tags"
USER_DATA_KEY = "user-data"  # what cloud-init reads on GCE
# The VM's engine certificate: the name it is made for, the CA it is of, and when it answered.
ENGINE_NAME_KEY = "dockyard-engine-name"
ENGINE_CA_KEY = "dockyard-engine-ca"
ENGINE_READY_KEY = "dockyard-engine-ready"
RESERVED_METADATA = frozenset({TAGS_METADATA_KEY, USER_DATA_KEY, ENGINE_NAME_KEY, ENGINE_CA_KEY})
GCE_METADATA_VALUE_LIMIT = 256 * 1024
IMAGE_CACHE_SECONDS = 3600.0
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"
DEFAULT_MACHINE_TYPE = "e2-small"
DEFAULT_DISK_TYPE = "pd-balanced"
OPTIONS = frozenset(
    {
        "project",
        "scope",
        "image",
        "machine_type",
        "disk_type",
        "network",
        "subnetwork",
        "service_account_email",
        "boot_disk_gb",
        "min_disk_gb",
        "operation_timeout",
        "call_timeout",
        "retry_timeout",
        "docker_port",
        "docker_api_version",
        "boot_timeout",
    }
)
# uuid5 namespace of Dockyard's request ids (any fixed uuid works; this one is ours).
REQUEST_NAMESPACE = uuid.UUID("6f1c2a8e-4d0b-5c3e-9a7f-1b2d3e4f5a6b")

_STATES: dict[str, VMState] = {
    "PROVISIONING": VMState.PENDING,
    "STAGING": VMState.PENDING,
    "REPAIRING": VMState.PENDING,
    "RUNNING": VMState.RUNNING,
    "STOPPING": VMState.STOPPED,
    "STOPPED": VMState.STOPPED,
    "SUSPENDING": VMState.STOPPED,
    "SUSPENDED": VMState.STOPPED,
    "TERMINATED": VMState.STOPPED,  # GCE's word for a stopped instance, not a deleted one
}
_LABEL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_TRANSIENT_REASONS = frozenset(
    {
        "quotaExceeded",
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "resourceNotReady",
        "resourceInUseByAnotherResource",
        "backendError",
    }
)
_TRANSIENT_OPERATION_CODES = frozenset(
    {
        "QUOTA_EXCEEDED",
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "RATE_LIMIT_EXCEEDED",
        "RESOURCE_NOT_READY",
        "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
        "RESOURCE_OPERATION_RATE_EXCEEDED",
        "INTERNAL_ERROR",
    }
)


def encode_label(value: str) -> str:
    """A GCE label value for ``value``: reversible (``_xx`` escapes) while it fits in 63
    characters, else a hash (``__`` never appears in an escaped value, so they cannot clash)."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        out.append(char if char in _LABEL_SAFE else f"_{byte:02x}")
    encoded = "".join(out)
    if len(encoded) <= 63:
        return encoded
    return "__" + hashlib.sha256(value.encode()).hexdigest()[:40]


def decode_label(encoded: str) -> str | None:
    """The original of an :func:`encode_label` value; None for a hashed one."""
    if encoded.startswith("__"):
        return None
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "_":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(encoded[i]))
            i += 1
    return raw.decode()


class _AlreadyExists(Exception):
    """A 409 / RESOURCE_ALREADY_EXISTS from an insert: look the resource up instead."""


def _reasons(error: gexc.GoogleAPICallError) -> set[str]:
    found = {str(e.get("reason", "")) for e in error.errors or [] if isinstance(e, dict)}
    if error.reason:
        found.add(str(error.reason))
    return found


def map_api_error(error: gexc.GoogleAPICallError, what: str) -> ProviderError:
    """An HTTP error of the compute API as the contract's typed error."""
    message = f"{what}: {error.code} {error.message}"
    if isinstance(error, gexc.NotFound):
        return NotFoundError(message)
    if isinstance(error, gexc.Unauthorized):
        return PermanentError(f"{message} (check credentials.service_account_json)")
    if isinstance(error, gexc.TooManyRequests):
        return TransientError(message, retry_after=10.0)
    if isinstance(error, gexc.ServerError):  # 500, 502, 503, 504
        return TransientError(message, retry_after=15.0)
    if isinstance(error, gexc.Conflict | gexc.PreconditionFailed):  # a concurrent change
        return TransientError(message, retry_after=5.0)
    if _reasons(error) & _TRANSIENT_REASONS:
        quota = "quotaExceeded" in _reasons(error)
        return TransientError(message, retry_after=300.0 if quota else 15.0)
    return PermanentError(message)


def _operation_error(operation: compute_v1.Operation, what: str) -> ProviderError | None:
    errors = list(operation.error.errors) if "error" in operation else []
    if not errors and operation.http_error_status_code < 400:
        return None
    codes = {e.code for e in errors}
    detail = "; ".join(f"{e.code}: {e.message}" for e in errors) or operation.http_error_message
    message = f"{what}: {detail}"
    status = operation.http_error_status_code
    if "RESOURCE_ALREADY_EXISTS" in codes or status == 409:
        raise _AlreadyExists(message)
    if "RESOURCE_NOT_FOUND" in codes or status == 404:
        return NotFoundError(message)
    if codes & _TRANSIENT_OPERATION_CODES or status in (429, 500, 502, 503, 504):
        quota = any("QUOTA" in c or "EXHAUSTED" in c for c in codes)
        return TransientError(message, retry_after=300.0 if quota else 15.0)
    return PermanentError(message)


@contextmanager
def _translated(what: str, *, conflict_means_exists: bool = False) -> Iterator[None]:
    try:
        yield
    except ProviderError:
        raise
    except gexc.Conflict as error:
        if conflict_means_exists:
            raise _AlreadyExists(f"{what}: {error.message}") from error
        raise map_api_error(error, what) from error
    except gexc.GoogleAPICallError as error:
        raise map_api_error(error, what) from error
    except gexc.RetryError as error:
        if isinstance(error.cause, gexc.GoogleAPICallError):
            raise map_api_error(error.cause, what) from error
        raise TransientError(
            f"{what}: gave up retrying: {error.cause}", retry_after=15.0
        ) from error
    except google.auth.exceptions.RefreshError as error:
        raise PermanentError(
            f"{what}: the service account cannot get a token: {error}; "
            "check credentials.service_account_json"
        ) from error
    except (
        google.auth.exceptions.TransportError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
    ) as error:
        raise TransientError(f"{what}: cannot reach Compute Engine: {error}") from error
    except google.auth.exceptions.GoogleAuthError as error:
        raise PermanentError(
            f"{what}: not authorised ({error}); check credentials.service_account_json"
        ) from error


def _last(url: str) -> str:
    return url.rsplit("/", 1)[-1]


class GCEProvider:
    resizes_attached_disks = True
    mounts_disks = False
    withheld_capabilities: frozenset[str] = frozenset()

    def __init__(self, config: ProviderConfig) -> None:
        check_known(config, OPTIONS)
        self.zone = required(config.zone, "spec.provider.zone", "the GCE zone, e.g. europe-west1-b")
        self.endpoint = config.endpoint
        self.scope = option_str(config, "scope", "default")
        self.image = option_str(config, "image")
        self.machine_type = option_str(config, "machine_type", DEFAULT_MACHINE_TYPE)
        self.disk_type = option_str(config, "disk_type", DEFAULT_DISK_TYPE)
        self.network = option_str(config, "network", "global/networks/default")
        self.subnetwork = option_str(config, "subnetwork")
        self.service_account_email = option_str(config, "service_account_email")
        self.boot_disk_gb = option_int(config, "boot_disk_gb", 20, minimum=10)
        self.boot_timeout = option_float(config, "boot_timeout", 900.0, minimum=1.0)
        self._images: dict[str, tuple[float, str]] = {}  # stock name -> (looked up at, URL)
        self.min_disk_gb = option_int(config, "min_disk_gb", 10, minimum=1)
        self.operation_timeout = option_float(config, "operation_timeout", 300.0, minimum=0.1)
        self.call_timeout = option_float(config, "call_timeout", 60.0, minimum=0.1)
        self._retry = gretry.Retry(
            predicate=gretry.if_exception_type(
                gexc.ServiceUnavailable, gexc.TooManyRequests, gexc.InternalServerError
            ),
            initial=0.2,
            maximum=5.0,
            timeout=option_float(config, "retry_timeout", 30.0, minimum=0.0),
        )
        self._tls = DockerTLS(
            config.credentials,
            port=option_int(config, "docker_port", DEFAULT_PORT, minimum=1),
            api_version=option_str(config, "docker_api_version", "1.41"),
        )
        self._lock = threading.RLock()
        protect(v for v in config.credentials.values() if v)

        credentials, project = self._credentials(config)
        self.project = required(
            option_str(config, "project") or project,
            "spec.provider.options.project",
            "the GCP project (or a service account JSON with project_id)",
        )
        options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
        common: dict[str, Any] = {
            "credentials": credentials,
            "transport": "rest",
            "client_options": options,
        }
        self.instances = compute_v1.InstancesClient(**common)
        self.disks = compute_v1.DisksClient(**common)
        self.operations = compute_v1.ZoneOperationsClient(**common)
        self.snapshots = compute_v1.SnapshotsClient(**common)
        self.global_operations = compute_v1.GlobalOperationsClient(**common)
        self.images = compute_v1.ImagesClient(**common)
        protect(v for v in config.credentials.values() if v)

    def _credentials(self, config: ProviderConfig) -> tuple[Credentials, str]:
        raw = config.credentials.get("service_account_json", "")
        if not raw:
            if self.endpoint:  # a local fake or emulator
                return AnonymousCredentials(), ""  # type: ignore[no-untyped-call]
            raise PermanentError(
                "credentials.service_account_json: required (a service account key as JSON)"
            )
        try:
            info = json.loads(raw)
        except ValueError:
            raise PermanentError("credentials.service_account_json: not valid JSON") from None
        if not isinstance(info, dict):
            raise PermanentError("credentials.service_account_json: not a JSON object")
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[COMPUTE_SCOPE]
            )
        except (ValueError, KeyError) as error:
            # The message names the missing field, never a value.
            raise PermanentError(
                f"credentials.service_account_json: not a service account key ({error})"
            ) from None
        return credentials, str(info.get("project_id", ""))

    @property
    def vm_config_salt(self) -> str:
        """What VMs are made from besides stemcell and machine type: the engine CA. A new CA
        rolls every VM like a new stemcell (canaries first), each getting a certificate of it;
        until then the old ones are reached with the previous CA."""
        return f"engine-ca {self._tls.ca_fingerprint}" if self._tls.issuing else ""

    def __repr__(self) -> str:
        return (
            f"GCEProvider(project={self.project!r}, zone={self.zone!r}, "
            f"endpoint={self.endpoint!r}, scope={self.scope!r})"
        )

    # --- plumbing ------------------------------------------------------------------------------

    def _zonal(
        self, what: str, method: Callable[..., T], *, exists_ok: bool = False, **request: Any
    ) -> T:
        with _translated(what, conflict_means_exists=exists_ok):
            return method(
                request={"project": self.project, "zone": self.zone, **request},
                retry=self._retry,
                timeout=self.call_timeout,
            )

    def _wait(self, operation: compute_v1.Operation, what: str) -> None:
        """Until the operation is DONE (or the deadline passes: TransientError)."""
        deadline = time.monotonic() + self.operation_timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransientError(
                    f"{what}: operation {operation.name} still {operation.status.name} after "
                    f"{self.operation_timeout:g}s",
                    retry_after=15.0,
                )
            try:
                with _translated(f"{what}: waiting for {operation.name}"):
                    # wait returns when DONE or after (at most) two minutes on the server side.
                    operation = self.operations.wait(
                        request={
                            "project": self.project,
                            "zone": self.zone,
                            "operation": operation.name,
                        },
                        retry=self._retry,
                        timeout=min(remaining, 130.0) + 1.0,
                    )
            except TransientError:
                if time.monotonic() >= deadline:
                    raise
        error = _operation_error(operation, what)
        if error is not None:
            raise error

    def _mutate(
        self, what: str, method: Callable[..., compute_v1.Operation], **request: Any
    ) -> None:
        """Send a mutation (request id: retries of this call are deduplicated) and await it."""
        request.setdefault("request_id", str(uuid.uuid4()))
        try:
            operation = self._zonal(what, method, **request)
            self._wait(operation, what)
        except _AlreadyExists as error:  # only inserts treat a conflict as "exists"
            raise TransientError(f"{error} (a concurrent change)", retry_after=5.0) from error

    def _identity(self, kind: str, tags: Mapping[str, str]) -> str:
        return json.dumps({"kind": kind, "scope": self.scope, "tags": sorted(tags.items())})

    def _name(self, kind: str, tags: Mapping[str, str]) -> str:
        digest = hashlib.sha256(self._identity(kind, tags).encode()).hexdigest()[:20]
        return f"dockyard-{kind}-{digest}"

    def _labels(self, tags: Mapping[str, str]) -> dict[str, str]:
        labels = {SCOPE_LABEL: encode_label(self.scope)}
        for key, value in tags.items():
            label = LABEL_PREFIX + encode_label(key)
            if not key or len(label) > 63 or label.startswith(LABEL_PREFIX + "__"):
                raise PermanentError(f"tag {key!r}: too long for a GCE label key")
            labels[label] = encode_label(value)
        return labels

    def _filter(self, tags: Mapping[str, str]) -> str:
        return " AND ".join(f'(labels.{k} = "{v}")' for k, v in self._labels(tags).items())

    def _ours(self, labels: Mapping[str, str]) -> bool:
        return labels.get(SCOPE_LABEL) == encode_label(self.scope)

    def _tags_from(self, stored: str, labels: Mapping[str, str]) -> dict[str, str]:
        try:
            tags = json.loads(stored) if stored else None
        except ValueError:
            tags = None
        if isinstance(tags, dict):
            return {str(k): str(v) for k, v in tags.items()}
        result = {}
        for key, value in labels.items():
            if key.startswith(LABEL_PREFIX) and key != SCOPE_LABEL:
                original_key = decode_label(key[len(LABEL_PREFIX) :])
                original_value = decode_label(value)
                if original_key is not None and original_value is not None:
                    result[original_key] = original_value
        return result

    def _insert(
        self,
        what: str,
        method: Callable[..., compute_v1.Operation],
        identity: str,
        lookup: Callable[[], T],
        **request: Any,
    ) -> T:
        """Insert idempotently: a duplicate (409) means it exists; a DONE operation whose
        resource is missing was a replay of an older request id (the resource was deleted
        since), so the insert is sent again with a fresh id."""
        request_ids = [str(uuid.uuid5(REQUEST_NAMESPACE, identity)), str(uuid.uuid4())]
        for request_id in request_ids:
            try:
                operation = self._zonal(
                    what, method, exists_ok=True, request_id=request_id, **request
                )
                self._wait(operation, what)
            except _AlreadyExists:
                pass
            try:
                return lookup()
            except NotFoundError:
                log.info("%s: request %s was a replay; sending a new one", what, request_id)
        raise TransientError(f"{what}: the new resource did not show up", retry_after=15.0)

    # --- VMs -----------------------------------------------------------------------------------

    def _vm(self, instance: compute_v1.Instance, *, probe: bool = True) -> VM:
        metadata = {item.key: item.value for item in instance.metadata.items}
        address = instance.network_interfaces[0].network_i_p if instance.network_interfaces else ""
        state = _STATES.get(instance.status, VMState.PENDING)
        if state is VMState.RUNNING and not self._booted(instance, metadata, address, probe):
            state = VMState.PENDING
        return VM(
            id=instance.name,
            state=state,
            tags=self._tags_from(metadata.get(TAGS_METADATA_KEY, ""), instance.labels),
            address=address or None,
        )

    def _instance(self, vm_id: str) -> compute_v1.Instance:
        instance = self._zonal(f"getting VM {vm_id}", self.instances.get, instance=vm_id)
        if not self._ours(instance.labels):
            raise NotFoundError(f"VM {vm_id} does not exist (not one of ours)")
        return instance

    def _booted(
        self, instance: compute_v1.Instance, metadata: Mapping[str, str], address: str, probe: bool
    ) -> bool:
        """A running VM made with user data is up once its engine answers with its own
        certificate (then marked ready, and never asked again), or once ``boot_timeout`` has
        passed (its silent engine is then the runtime's business: it replaces the VM)."""
        name = metadata.get(ENGINE_NAME_KEY)
        if not name or metadata.get(ENGINE_READY_KEY):
            return True
        try:
            created = datetime.fromisoformat(instance.creation_timestamp)
        except ValueError:
            created = datetime.now(UTC)
        if (datetime.now(UTC) - created).total_seconds() >= self.boot_timeout:
            return True
        if not probe or not address:
            return False
        if not self._tls.answers(address, name, metadata.get(ENGINE_CA_KEY, "")):
            return False
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self._set_metadata(instance.name, {ENGINE_READY_KEY: now})
        log.info("VM %s: its engine answers (booted)", instance.name)
        return True

    def _stock_image(self, image: bootstrap.StockImage) -> str:
        """The URL of a stock image family's newest image (looked up once an hour)."""
        with self._lock:
            cached = self._images.get(image.name)
            if cached is not None and time.monotonic() - cached[0] < IMAGE_CACHE_SECONDS:
                return cached[1]
        try:
            with _translated(f"looking up the stock image {image.name}"):
                found = self.images.get_from_family(
                    request={"project": image.gce_project, "family": image.gce_family},
                    retry=self._retry,
                    timeout=self.call_timeout,
                )
        except NotFoundError:
            raise PermanentError(
                f"stemcell {image.name}: no image in the family {image.gce_family} of project "
                f"{image.gce_project}"
            ) from None
        url = found.self_link or (f"projects/{image.gce_project}/global/images/{found.name}")
        with self._lock:
            self._images[image.name] = (time.monotonic(), url)
        return url

    def _image(self, stemcell: str) -> str:
        name = stemcell or self.image
        if not name and self._tls.issuing:
            name = bootstrap.DEFAULT_STOCK
        name = required(
            name,
            "spec.provider.options.image",
            "an image URL, or a stock image such as debian-12, unless the Deployment names "
            "its stemcell",
        )
        stock = bootstrap.stock_image(name)
        if stock is None:
            return name
        if not self._tls.issuing:
            self._tls.issue_for_vm()  # raises: a stock image needs the engine CA
        return self._stock_image(stock)

    def find_vms(self, tags: Mapping[str, str], *, probe: bool = True) -> list[VM]:
        pages = self._zonal("listing VMs", self.instances.list, filter=self._filter(tags))
        with _translated("listing VMs"):
            found = list(pages)
        wanted = self._labels(tags)
        matching = [i for i in found if wanted.items() <= dict(i.labels).items()]
        matching.sort(key=lambda i: (i.creation_timestamp, i.name))
        probing = self._probing if probe else lambda _: False
        return map_probing(matching, probing, lambda i: self._vm(i, probe=probe))

    @staticmethod
    def _probing(instance: compute_v1.Instance) -> bool:
        keys = {item.key for item in instance.metadata.items}
        running = instance.status == "RUNNING"
        return running and ENGINE_NAME_KEY in keys and ENGINE_READY_KEY not in keys

    def create_vm(self, spec: VMSpec) -> VM:
        labels = self._labels(spec.tags)
        image = self._image(spec.stemcell)
        name = self._name("vm", spec.tags)
        instance, secrets = self._instance_resource(spec, name, labels, image)

        def lookup() -> VM:
            found = self._zonal(f"getting VM {name}", self.instances.get, instance=name)
            if not labels.items() <= dict(found.labels).items():
                raise PermanentError(
                    f"VM name {name} is taken by an instance that is not this VM "
                    f"(labels {dict(found.labels)})"
                )
            return self._vm(found, probe=False)

        with self._lock:
            existing = self.find_vms(spec.tags, probe=False)
            if existing:
                return existing[0]
            with protected(secrets):
                vm = self._insert(
                    f"creating VM {name}",
                    self.instances.insert_unary,
                    self._identity("vm", spec.tags),
                    lookup,
                    instance_resource=instance,
                )
            log.info("created GCE instance %s", name)
            return vm

    def _instance_resource(
        self, spec: VMSpec, name: str, labels: dict[str, str], image: str
    ) -> tuple[compute_v1.Instance, list[str]]:
        """The instance to insert, and the secrets its request carries (masked while sent)."""
        secrets: list[str] = []
        metadata = [
            compute_v1.Items(key=k, value=v)
            for k, v in spec.metadata.items()
            if k not in RESERVED_METADATA
        ]
        metadata.append(compute_v1.Items(key=TAGS_METADATA_KEY, value=json.dumps(dict(spec.tags))))
        if self._tls.issuing:
            boot = self._tls.boot_for_vm(GCE_METADATA_VALUE_LIMIT)
            secrets += boot.secrets
            metadata += [
                compute_v1.Items(key=USER_DATA_KEY, value=boot.user_data.decode()),
                compute_v1.Items(key=ENGINE_NAME_KEY, value=boot.certificate.name),
                compute_v1.Items(key=ENGINE_CA_KEY, value=boot.certificate.ca_fingerprint),
            ]
        interface = compute_v1.NetworkInterface(network=self.network)
        if self.subnetwork:
            interface.subnetwork = self.subnetwork
        machine_type = spec.machine_type or self.machine_type
        instance = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{self.zone}/machineTypes/{machine_type}",
            labels=labels,
            metadata=compute_v1.Metadata(items=metadata),
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=image, disk_size_gb=self.boot_disk_gb
                    ),
                )
            ],
            network_interfaces=[interface],
        )
        if self.service_account_email:
            instance.service_accounts = [
                compute_v1.ServiceAccount(email=self.service_account_email, scopes=[COMPUTE_SCOPE])
            ]
        return instance, secrets

    def delete_vm(self, vm_id: str) -> None:
        with self._lock:
            try:
                self._instance(vm_id)
                self._mutate(f"deleting VM {vm_id}", self.instances.delete_unary, instance=vm_id)
            except NotFoundError:
                return
            log.info("deleted GCE instance %s", vm_id)

    def vm_state(self, vm_id: str) -> VMState:
        try:
            instance = self._instance(vm_id)
        except NotFoundError:
            return VMState.MISSING
        return self._vm(instance).state

    def set_vm_metadata(self, vm_id: str, metadata: Mapping[str, str]) -> None:
        reserved = sorted(RESERVED_METADATA & set(metadata))
        if reserved:
            raise PermanentError(f"metadata {reserved[0]!r}: reserved for Dockyard")
        self._set_metadata(vm_id, metadata)

    def _set_metadata(self, vm_id: str, metadata: Mapping[str, str]) -> None:
        for attempt in range(3):
            instance = self._instance(vm_id)
            items = {item.key: item.value for item in instance.metadata.items}
            if all(items.get(k) == v for k, v in metadata.items()):
                return
            items.update(metadata)
            body = compute_v1.Metadata(
                fingerprint=instance.metadata.fingerprint,
                items=[compute_v1.Items(key=k, value=v) for k, v in items.items()],
            )
            try:
                self._mutate(
                    f"setting metadata of VM {vm_id}",
                    self.instances.set_metadata_unary,
                    instance=vm_id,
                    metadata_resource=body,
                )
                return
            except TransientError:
                # A concurrent change moved the fingerprint (412): read again and retry.
                if attempt == 2:
                    raise

    def docker_client(self, vm_id: str) -> docker.DockerClient:
        instance = self._instance(vm_id)
        vm = self._vm(instance, probe=False)
        if not vm.address:
            raise TransientError(f"VM {vm_id} has no internal address yet", retry_after=5.0)
        metadata = {item.key: item.value for item in instance.metadata.items}
        return self._tls.client(
            vm.address,
            engine_name=metadata.get(ENGINE_NAME_KEY, ""),
            ca_fingerprint=metadata.get(ENGINE_CA_KEY, ""),
        )

    # --- disks ---------------------------------------------------------------------------------

    def _gb(self, size_mib: int) -> int:
        if size_mib <= 0:
            raise PermanentError(f"size_mib: must be a positive integer, got {size_mib!r}")
        return max(self.min_disk_gb, math.ceil(size_mib / 1024))

    def _disk(self, disk: compute_v1.Disk) -> Disk:
        # Tags as created (the description keeps them exactly), with what set_disk_metadata
        # changed since (labels only: a disk's description cannot change).
        created = self._tags_from(disk.description, disk.labels)
        now = self._tags_from("", disk.labels)
        labelled = {key for key in created if LABEL_PREFIX + encode_label(key) in disk.labels}
        tags = {k: now.get(k, v) for k, v in created.items() if k in labelled}
        tags |= {k: v for k, v in now.items() if k not in created}
        return Disk(
            id=disk.name,
            size_mib=int(disk.size_gb) * 1024,
            tags=tags,
            attached_to=_last(disk.users[0]) if disk.users else None,
            disk_type=_last(disk.type_),
        )

    def _get_disk(self, disk_id: str) -> compute_v1.Disk:
        disk = self._zonal(f"getting disk {disk_id}", self.disks.get, disk=disk_id)
        if not self._ours(disk.labels):
            raise NotFoundError(f"disk {disk_id} does not exist (not one of ours)")
        return disk

    def set_disk_metadata(self, disk_id: str, tags: Mapping[str, str | None]) -> Disk:
        for attempt in range(3):
            disk = self._get_disk(disk_id)
            labels = dict(disk.labels)
            for key, value in tags.items():
                label = LABEL_PREFIX + encode_label(key)
                if value is None:
                    labels.pop(label, None)
                else:
                    labels.update(
                        {k: v for k, v in self._labels({key: value}).items() if k == label}
                    )
            body = compute_v1.ZoneSetLabelsRequest(
                label_fingerprint=disk.label_fingerprint, labels=labels
            )
            try:
                self._mutate(
                    f"labelling disk {disk_id}",
                    self.disks.set_labels_unary,
                    resource=disk_id,
                    zone_set_labels_request_resource=body,
                )
                break
            except TransientError:
                if attempt == 2:  # a concurrent change moved the fingerprint (412)
                    raise
        return self._disk(self._get_disk(disk_id))

    # --- snapshots (global resources) ------------------------------------------------------------

    def _global(self, what: str, method: Callable[..., T], **request: Any) -> T:
        with _translated(what):
            return method(
                request={"project": self.project, **request},
                retry=self._retry,
                timeout=self.call_timeout,
            )

    def _snapshot(self, snapshot: compute_v1.Snapshot) -> Snapshot:
        created = self._tags_from(snapshot.description, snapshot.labels)
        return Snapshot(
            id=snapshot.name,
            disk_id=_last(snapshot.source_disk) if snapshot.source_disk else "",
            size_mib=int(snapshot.disk_size_gb) * 1024,
            tags=created,
            ready=snapshot.status == "READY",
        )

    def find_snapshots(self, tags: Mapping[str, str]) -> list[Snapshot]:
        pages = self._global("listing snapshots", self.snapshots.list, filter=self._filter(tags))
        with _translated("listing snapshots"):
            found = list(pages)
        wanted = self._labels(tags)
        return [self._snapshot(s) for s in found if wanted.items() <= dict(s.labels).items()]

    def snapshot_disk(self, disk_id: str, tags: Mapping[str, str]) -> Snapshot:
        with self._lock:
            existing = self.find_snapshots(tags)
            if existing:
                return existing[0]
            self._get_disk(disk_id)
            name = self._name("snapshot", tags)
            body = compute_v1.Snapshot(
                name=name, labels=self._labels(tags), description=json.dumps(dict(tags))
            )
            self._mutate(
                f"snapshotting disk {disk_id}",
                self.disks.create_snapshot_unary,
                disk=disk_id,
                snapshot_resource=body,
            )
            found = self._global(f"getting snapshot {name}", self.snapshots.get, snapshot=name)
            return self._snapshot(found)

    def delete_snapshot(self, snapshot_id: str) -> None:
        try:
            found = self._global(
                f"getting snapshot {snapshot_id}", self.snapshots.get, snapshot=snapshot_id
            )
        except NotFoundError:
            return
        if not self._ours(found.labels):
            return
        operation = self._global(
            f"deleting snapshot {snapshot_id}",
            self.snapshots.delete_unary,
            snapshot=snapshot_id,
            request_id=str(uuid.uuid4()),
        )
        deadline = time.monotonic() + self.operation_timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() >= deadline:
                raise TransientError(f"deleting snapshot {snapshot_id}: not done", retry_after=15.0)
            operation = self._global(
                f"waiting to delete snapshot {snapshot_id}",
                self.global_operations.wait,
                operation=operation.name,
            )
        error = _operation_error(operation, f"deleting snapshot {snapshot_id}")
        if error is not None:
            raise error

    def find_disks(self, tags: Mapping[str, str]) -> list[Disk]:
        pages = self._zonal("listing disks", self.disks.list, filter=self._filter(tags))
        with _translated("listing disks"):
            found = list(pages)
        wanted = self._labels(tags)
        matching = [d for d in found if wanted.items() <= dict(d.labels).items()]
        matching.sort(key=lambda d: (d.creation_timestamp, d.name))
        return [self._disk(d) for d in matching]

    def create_disk(self, spec: DiskSpec) -> Disk:
        labels = self._labels(spec.tags)
        name = self._name("disk", spec.tags)
        disk_type = spec.disk_type or self.disk_type
        body = compute_v1.Disk(
            name=name,
            size_gb=self._gb(spec.size_mib),
            type_=f"zones/{self.zone}/diskTypes/{disk_type}",
            labels=labels,
            description=json.dumps(dict(spec.tags)),
        )
        if spec.snapshot:
            source = self._global(
                f"getting snapshot {spec.snapshot}", self.snapshots.get, snapshot=spec.snapshot
            )
            if int(source.disk_size_gb) * 1024 > spec.size_mib:
                raise PermanentError(
                    f"size: {spec.size_mib} MiB is smaller than snapshot {spec.snapshot} "
                    f"({source.disk_size_gb} GB)"
                )
            body.source_snapshot = f"projects/{self.project}/global/snapshots/{spec.snapshot}"

        def lookup() -> Disk:
            found = self._zonal(f"getting disk {name}", self.disks.get, disk=name)
            if not labels.items() <= dict(found.labels).items():
                raise PermanentError(f"disk name {name} is taken by a disk that is not this one")
            return self._disk(found)

        with self._lock:
            existing = self.find_disks(spec.tags)
            if existing:
                return existing[0]
            disk = self._insert(
                f"creating disk {name}",
                self.disks.insert_unary,
                self._identity("disk", spec.tags),
                lookup,
                disk_resource=body,
            )
            log.info("created GCE disk %s (%s GB)", name, body.size_gb)
            return disk

    @staticmethod
    def _device_name(instance: compute_v1.Instance, disk_id: str) -> str | None:
        for attached in instance.disks:
            if _last(attached.source) == disk_id:
                return attached.device_name
        return None

    def attach_disk(self, vm_id: str, disk_id: str) -> Attachment:
        with self._lock:
            disk = self._get_disk(disk_id)
            instance = self._instance(vm_id)
            device = self._device_name(instance, disk_id)
            if device is not None:
                return Attachment(device=f"/dev/disk/by-id/google-{device}")
            others = [_last(user) for user in disk.users if _last(user) != vm_id]
            if others:
                raise TransientError(
                    f"disk {disk_id} is attached to VM {others[0]}; detach it first",
                    retry_after=15.0,
                )
            self._mutate(
                f"attaching disk {disk_id} to VM {vm_id}",
                self.instances.attach_disk_unary,
                instance=vm_id,
                attached_disk_resource=compute_v1.AttachedDisk(
                    source=disk.self_link,
                    device_name=disk_id,
                    auto_delete=False,
                    mode="READ_WRITE",
                ),
            )
            log.info("attached GCE disk %s to %s", disk_id, vm_id)
            return Attachment(device=f"/dev/disk/by-id/google-{disk_id}")

    def _detach(self, vm_id: str, disk_id: str) -> None:
        try:
            instance = self._instance(vm_id)
        except NotFoundError:
            return
        device = self._device_name(instance, disk_id)
        if device is None:
            return
        self._mutate(
            f"detaching disk {disk_id} from VM {vm_id}",
            self.instances.detach_disk_unary,
            instance=vm_id,
            device_name=device,
        )
        log.info("detached GCE disk %s from %s", disk_id, vm_id)

    def detach_disk(self, vm_id: str, disk_id: str) -> None:
        with self._lock:
            self._get_disk(disk_id)
            self._detach(vm_id, disk_id)

    def resize_disk(self, disk_id: str, size_mib: int) -> Disk:
        target = self._gb(size_mib)
        with self._lock:
            disk = self._get_disk(disk_id)
            current = int(disk.size_gb)
            if target < current:
                raise ShrinkRefusedError(
                    f"disk {disk_id} is {current} GB; it never shrinks to {target} GB"
                )
            if target == current:
                return self._disk(disk)
            self._mutate(
                f"growing disk {disk_id} to {target} GB",
                self.disks.resize_unary,
                disk=disk_id,
                disks_resize_request_resource=compute_v1.DisksResizeRequest(size_gb=target),
            )
            log.info("grew GCE disk %s from %s to %s GB", disk_id, current, target)
            return self._disk(self._get_disk(disk_id))

    def delete_disk(self, disk_id: str) -> None:
        with self._lock:
            try:
                disk = self._get_disk(disk_id)
                for user in disk.users:
                    self._detach(_last(user), disk_id)
                self._mutate(f"deleting disk {disk_id}", self.disks.delete_unary, disk=disk_id)
            except NotFoundError:
                return
            log.info("deleted GCE disk %s", disk_id)

    def close(self) -> None:
        self._tls.close()
        for client in (self.instances, self.disks, self.operations, self.images):
            client.transport.close()  # type: ignore[no-untyped-call]
