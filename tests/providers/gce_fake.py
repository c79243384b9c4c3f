"""A small, honest HTTP fake of the Compute Engine v1 REST API, for the GCE provider's tests.

It covers exactly what GCEProvider calls, the way the real API answers it: camelCase JSON,
int64 fields as strings, zonal operations that start RUNNING and become DONE after a short
while or on ``wait``, resources in transitional states until their operation is done, 404 for
unknown resources, 409 for a duplicate name, ``requestId`` deduplication (a repeated id returns
the first operation, even long after it finished), 400 for shrinking a disk or deleting one in
use, 412 for a stale metadata fingerprint, list ``filter`` on labels, paging, and the OAuth
token endpoint of a service account (JWT bearer grant, signature checked).

Tests steer it: ``fail_next`` makes the next matching call(s) fail with an HTTP error,
``fail_next_operation`` makes the next operation finish with an error, ``hold_operations``
keeps operations RUNNING until ``release_operations``, ``stale_lists`` answers lists from the
past, ``forget_request_ids`` ends the deduplication window. ``add_image`` publishes an image
(in any project, in a family): ``images.getFromFamily`` answers the family's newest image that is
not deprecated, as the real API does.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import google.auth.jwt

API = "https://www.googleapis.com/compute/v1"
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
FILTER_TERM = re.compile(r'^\(?\s*([A-Za-z][\w.-]*)\s*(=|!=)\s*("[^"]*"|[^\s()"]+)\s*\)?$')
ROUTE = re.compile(
    r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/"
    r"(?P<collection>instances|disks|operations)(?:/(?P<name>[^/]+))?(?:/(?P<verb>[A-Za-z]+))?$"
)
# Global resources (snapshots) live in a pseudo-zone named "global".
GLOBAL_ROUTE = re.compile(
    r"^/compute/v1/projects/(?P<project>[^/]+)/(?P<zone>global)/"
    r"(?P<collection>snapshots|operations)(?:/(?P<name>[^/]+))?(?:/(?P<verb>[A-Za-z]+))?$"
)

IMAGE_ROUTE = re.compile(
    r"^/compute/v1/projects/(?P<project>[^/]+)/global/images/(?:family/(?P<family>[^/]+)|(?P<name>[^/]+))$"
)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            }
        }


@dataclass
class Fault:
    status: int
    reason: str
    message: str
    times: int
    method: str | None
    path_contains: str | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


@dataclass
class Operation:
    body: dict[str, Any]
    done_at: float
    on_done: Callable[[], None] | None = None
    on_failed: Callable[[], None] | None = None
    error: tuple[str, str, int] | None = None  # code, message, http status
    finished: bool = False


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    authorization: str | None


@dataclass
class Zone:
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # in "global" only

    def collection(self, name: str) -> dict[str, dict[str, Any]]:
        return {"instances": self.instances, "disks": self.disks, "snapshots": self.snapshots}[name]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "-00:00")


def _fingerprint() -> str:
    return base64.b64encode(random.randbytes(8)).decode()


def _not_found(kind: str, path: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{path}' was not found")


class GCEFake:
    def __init__(self, *, op_delay: float = 0.2, wait_cap: float = 1.0) -> None:
        self.op_delay = op_delay
        self.wait_cap = wait_cap  # the real wait returns after at most 2 minutes
        # Internal IPs handed to new instances, in order (a test may point one at 127.0.0.1).
        self.network_ips: Iterator[str] = (
            f"10.128.{n // 250}.{n % 250 + 2}" for n in itertools.count()
        )
        self.stale_list_answers = 0
        self.zones: dict[tuple[str, str], Zone] = {}
        self.operations: dict[str, Operation] = {}
        self.request_ids: dict[str, str] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.operation_faults: list[tuple[str, str, int]] = []
        self.held = False
        self.service_accounts: dict[str, str] = {}  # client_email -> public key PEM
        self.tokens: set[str] = set()  # issued by the token endpoint
        self.bearers: set[str] = set()  # every bearer credential presented
        self.self_signed_issuers: set[str] = set()
        self.images: dict[tuple[str, str], dict[str, Any]] = {}  # (project, name) -> image
        self._ids = itertools.count(random.randrange(10**17, 9 * 10**17))
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> GCEFake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    # --- steering ------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        reason: str,
        message: str = "",
        *,
        times: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        with self._changed:
            self.faults.append(
                Fault(status, reason, message or reason, times, method, path_contains)
            )

    def fail_next_operation(self, code: str, message: str, http_status: int) -> None:
        with self._changed:
            self.operation_faults.append((code, message, http_status))

    def hold_operations(self) -> None:
        with self._changed:
            self.held = True

    def release_operations(self) -> None:
        with self._changed:
            self.held = False
            self._changed.notify_all()

    @contextmanager
    def operations_held(self) -> Iterator[None]:
        self.hold_operations()
        try:
            yield
        finally:
            self.release_operations()

    def stale_lists(self, times: int = 1) -> None:
        """The next ``times`` list calls answer from before any resource existed, as a list that
        lags behind a create would."""
        with self._changed:
            self.stale_list_answers += times

    def forget_request_ids(self) -> None:
        """Forget every requestId, as the real API does after its deduplication window."""
        with self._changed:
            self.request_ids.clear()

    def trust_service_account(self, client_email: str, public_key_pem: str) -> None:
        """Require a bearer token from now on, issued to this service account."""
        with self._changed:
            self.service_accounts[client_email] = public_key_pem

    def add_image(
        self, project: str, name: str, family: str, *, created: str, deprecated: bool = False
    ) -> str:
        """Publish an image; returns its selfLink. ``created``: its creationTimestamp."""
        link = f"{API}/projects/{project}/global/images/{name}"
        image: dict[str, Any] = {
            "kind": "compute#image",
            "id": str(next(self._ids)),
            "creationTimestamp": created,
            "name": name,
            "family": family,
            "status": "READY",
            "diskSizeGb": "2",
            "selfLink": link,
        }
        if deprecated:
            image["deprecated"] = {"state": "DEPRECATED", "replacement": ""}
        with self._changed:
            self.images[(project, name)] = image
        return link

    def _image(self, project: str, family: str | None, name: str | None) -> dict[str, Any]:
        with self._changed:
            if name is not None:
                found = self.images.get((project, name))
                if found is None:
                    raise _not_found("image", f"projects/{project}/global/images/{name}")
                return dict(found)
            members = [
                i
                for (p, _), i in self.images.items()
                if p == project and i["family"] == family and "deprecated" not in i
            ]
            if not members:
                raise _not_found("image", f"projects/{project}/global/images/family/{family}")
            return dict(max(members, key=lambda i: i["creationTimestamp"]))

    def all_instances(self) -> list[dict[str, Any]]:
        with self._changed:
            self._advance()
            return [dict(i) for z in self.zones.values() for i in z.instances.values()]

    def all_disks(self) -> list[dict[str, Any]]:
        with self._changed:
            self._advance()
            return [dict(d) for z in self.zones.values() for d in z.disks.values()]

    # --- HTTP ----------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        status, body = HTTPStatus.OK, {}
        try:
            if parsed.path == "/token" and handler.command == "POST":
                body = self._token(urllib.parse.parse_qs(raw.decode()))
            else:
                payload = json.loads(raw) if raw else None
                auth = handler.headers.get("Authorization")
                with self._changed:
                    self.requests.append(
                        Request(handler.command, parsed.path, query, payload, auth)
                    )
                    self._check_auth(auth)
                    self._inject_fault(handler.command, parsed.path)
                    self._advance()
                body = self._route(handler.command, parsed.path, query, payload)
        except ApiError as error:
            status, body = HTTPStatus(error.status), error.body()
        except ValueError as error:
            status, body = HTTPStatus.BAD_REQUEST, ApiError(400, "parseError", str(error)).body()
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _token(self, form: dict[str, list[str]]) -> dict[str, Any]:
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise ApiError(400, "unsupported_grant_type", f"grant_type {grant!r}")
        assertion = form.get("assertion", [""])[0]
        unverified = google.auth.jwt.decode(assertion, verify=False)
        with self._changed:
            public_key = self.service_accounts.get(str(unverified.get("iss")))
        if public_key is None:
            raise ApiError(400, "invalid_grant", "unknown service account")
        try:
            google.auth.jwt.decode(assertion, certs=public_key, audience=self.token_uri)
        except ValueError as error:
            raise ApiError(400, "invalid_grant", f"bad assertion: {error}") from error
        token = "ya29.fake-" + base64.urlsafe_b64encode(random.randbytes(24)).decode()
        with self._changed:
            self.tokens.add(token)
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def _check_auth(self, authorization: str | None) -> None:
        """Once a service account is trusted, every call needs a bearer token: one the token
        endpoint issued, or a JWT the account signed itself (what the client libraries send
        for service account keys, skipping the token endpoint)."""
        if not self.service_accounts:
            return
        bearer = (authorization or "").removeprefix("Bearer ")
        self.bearers.add(bearer)
        if bearer and bearer in self.tokens:
            return
        try:
            issuer = str(google.auth.jwt.decode(bearer, verify=False).get("iss"))
            google.auth.jwt.decode(bearer, certs=self.service_accounts[issuer], verify=True)
        except (ValueError, KeyError):
            raise ApiError(
                401, "authError", "Request had invalid authentication credentials."
            ) from None
        self.self_signed_issuers.add(issuer)

    def _inject_fault(self, method: str, path: str) -> None:
        for fault in self.faults:
            if fault.times > 0 and fault.matches(method, path):
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                raise ApiError(fault.status, fault.reason, fault.message)

    def _route(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any] | None
    ) -> dict[str, Any]:
        image = IMAGE_ROUTE.match(path)
        if image is not None and method == "GET":
            return self._image(image["project"], image["family"], image["name"])
        match = ROUTE.match(path) or GLOBAL_ROUTE.match(path)
        if match is None:
            raise ApiError(404, "notFound", f"no such API path {path}")
        project, zone_name = match["project"], match["zone"]
        collection, name, verb = match["collection"], match["name"], match["verb"]
        with self._changed:
            zone = self.zones.setdefault((project, zone_name), Zone())
        prefix = (
            f"projects/{project}/global"
            if zone_name == "global"
            else f"projects/{project}/zones/{zone_name}"
        )
        if collection == "operations":
            if name is None or verb not in (None, "wait") or method != ("POST" if verb else "GET"):
                raise ApiError(405, "badRequest", f"{method} {path} is not supported")
            return self._operation(name, wait=verb == "wait", path=f"{prefix}/operations/{name}")
        with self._changed:
            if name is None:
                if method == "GET":
                    return self._list(zone, collection, prefix, query)
                if method == "POST":
                    insert = (
                        self._insert_instance if collection == "instances" else self._insert_disk
                    )
                    return self._deduplicated(
                        query, lambda: insert(zone, prefix, body or {}, query)
                    )
            elif verb is None and method == "GET":
                return self._get(zone, collection, prefix, name)
            elif verb is None and method == "DELETE":
                delete = {
                    "instances": self._delete_instance,
                    "disks": self._delete_disk,
                    "snapshots": self._delete_snapshot,
                }[collection]
                return self._deduplicated(query, lambda: delete(zone, prefix, name))
            elif method == "POST":
                handlers: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
                    ("instances", "setMetadata"): lambda: self._set_metadata(
                        zone, prefix, name, body or {}
                    ),
                    ("instances", "attachDisk"): lambda: self._attach(
                        zone, prefix, name, body or {}
                    ),
                    ("instances", "detachDisk"): lambda: self._detach(
                        zone, prefix, name, query.get("deviceName", "")
                    ),
                    ("disks", "resize"): lambda: self._resize(zone, prefix, name, body or {}),
                    ("disks", "setLabels"): lambda: self._set_labels(
                        zone, prefix, name, body or {}
                    ),
                    ("disks", "createSnapshot"): lambda: self._create_snapshot(
                        zone, prefix, project, name, body or {}
                    ),
                }
                if (collection, verb or "") in handlers:
                    return self._deduplicated(query, handlers[(collection, verb or "")])
        raise ApiError(405, "badRequest", f"{method} {path} is not supported by the fake")

    # --- operations ----------------------------------------------------------------------------

    def _deduplicated(
        self, query: dict[str, str], start: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        request_id = query.get("requestId")
        if request_id:
            if not re.fullmatch(
                r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", request_id
            ):
                raise ApiError(
                    400, "invalid", f"Invalid value for field 'requestId': '{request_id}'"
                )
            if request_id in self.request_ids:
                return dict(self.operations[self.request_ids[request_id]].body)
        body = start()
        if request_id:
            self.request_ids[request_id] = body["name"]
        return body

    def _new_operation(
        self,
        prefix: str,
        kind: str,
        target: str,
        target_id: str,
        on_done: Callable[[], None] | None = None,
        on_failed: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        op_id = str(next(self._ids))
        name = f"operation-{int(time.time() * 1000)}-{op_id[-12:]}-{random.randbytes(4).hex()}"
        body = {
            "kind": "compute#operation",
            "id": op_id,
            "name": name,
            "zone": f"{API}/{prefix.rsplit('/operations', 1)[0]}",
            "operationType": kind,
            "targetLink": f"{API}/{target}",
            "targetId": target_id,
            "status": "RUNNING",
            "user": "dockyard@example.iam.gserviceaccount.com",
            "progress": 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{API}/{prefix}/operations/{name}",
        }
        error = self.operation_faults.pop(0) if self.operation_faults else None
        self.operations[name] = Operation(
            body=body,
            done_at=time.monotonic() + self.op_delay,
            on_done=on_done,
            on_failed=on_failed,
            error=error,
        )
        return dict(body)

    def _finish(self, operation: Operation) -> None:
        operation.finished = True
        operation.body.update(status="DONE", progress=100, endTime=_now())
        if operation.error is not None:
            code, message, http_status = operation.error
            operation.body["error"] = {"errors": [{"code": code, "message": message}]}
            operation.body["httpErrorStatusCode"] = http_status
            operation.body["httpErrorMessage"] = HTTPStatus(http_status).phrase.upper()
            if operation.on_failed is not None:
                operation.on_failed()
        elif operation.on_done is not None:
            operation.on_done()
        self._changed.notify_all()

    def _advance(self) -> None:
        """Finish every operation whose time has come (lazily, on each request)."""
        if self.held:
            return
        now = time.monotonic()
        for operation in list(self.operations.values()):
            if not operation.finished and operation.done_at <= now:
                self._finish(operation)

    def _operation(self, name: str, *, wait: bool, path: str) -> dict[str, Any]:
        with self._changed:
            operation = self.operations.get(name)
            if operation is None:
                raise _not_found("operation", path)
            if wait and not operation.finished:
                deadline = time.monotonic() + self.wait_cap
                while self.held and time.monotonic() < deadline:
                    self._changed.wait(timeout=max(0.0, deadline - time.monotonic()))
                if not self.held:
                    self._finish(operation)
            return dict(operation.body)

    # --- resources -----------------------------------------------------------------------------

    def _list(
        self, zone: Zone, collection: str, prefix: str, query: dict[str, str]
    ) -> dict[str, Any]:
        items = list(zone.collection(collection).values())
        if self.stale_list_answers > 0:
            self.stale_list_answers -= 1
            items = []
        matches = _parse_filter(query.get("filter", ""))
        items = [dict(i) for i in items if all(m(i) for m in matches)]
        items.sort(key=lambda i: i["name"])
        size = int(query.get("maxResults", "500"))
        start = int(query.get("pageToken", "0") or 0)
        page = items[start : start + size]
        kind = {
            "instances": "compute#instanceList",
            "disks": "compute#diskList",
            "snapshots": "compute#snapshotList",
        }[collection]
        result: dict[str, Any] = {
            "kind": kind,
            "id": f"{prefix}/{collection}",
            "selfLink": f"{API}/{prefix}/{collection}",
        }
        if page:
            result["items"] = page
        if start + size < len(items):
            result["nextPageToken"] = str(start + size)
        return result

    def _get(self, zone: Zone, collection: str, prefix: str, name: str) -> dict[str, Any]:
        resources = zone.collection(collection)
        if name not in resources:
            raise _not_found(collection, f"{prefix}/{collection}/{name}")
        return dict(resources[name])

    @staticmethod
    def _check_labels(labels: dict[str, str]) -> None:
        for key, value in labels.items():
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(str(value)):
                raise ApiError(
                    400, "invalid", f"Invalid value for field 'resource.labels': '{key}={value}'"
                )

    @staticmethod
    def _check_name(name: str) -> None:
        if not NAME.match(name or ""):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'")

    def _insert_instance(
        self, zone: Zone, prefix: str, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        name = body.get("name", "")
        self._check_name(name)
        self._check_labels(body.get("labels", {}))
        link = f"{prefix}/instances/{name}"
        if name in zone.instances:
            raise ApiError(409, "alreadyExists", f"The resource '{link}' already exists")
        boot = [d for d in body.get("disks", []) if d.get("boot")]
        if len(boot) != 1 or "initializeParams" not in boot[0]:
            raise ApiError(400, "required", "Required field 'resource.disks[0]' not specified")
        if name in zone.disks:
            raise ApiError(
                409, "alreadyExists", f"The resource '{prefix}/disks/{name}' already exists"
            )
        params = boot[0]["initializeParams"]
        boot_disk = self._disk_body(
            prefix,
            name,
            size_gb=int(params.get("diskSizeGb", "10")),
            disk_type=params.get("diskType", "pd-standard"),
            labels=params.get("labels", {}),
            description="",
        )
        boot_disk.update(status="READY", sourceImage=params.get("sourceImage", ""))
        boot_disk["users"] = [f"{API}/{link}"]
        machine_type = body.get("machineType", "")
        instance_id = str(next(self._ids))
        instance = {
            "kind": "compute#instance",
            "id": instance_id,
            "creationTimestamp": _now(),
            "name": name,
            "machineType": f"{API}/{prefix}/machineTypes/{machine_type.rsplit('/', 1)[-1]}",
            "status": "PROVISIONING",
            "zone": f"{API}/{prefix}",
            "networkInterfaces": [
                {
                    "kind": "compute#networkInterface",
                    "network": f"{API}/projects/{prefix.split('/')[1]}/global/networks/"
                    + (body.get("networkInterfaces") or [{}])[0]
                    .get("network", "default")
                    .rsplit("/", 1)[-1],
                    "networkIP": next(self.network_ips),
                    "name": "nic0",
                }
            ],
            "disks": [
                {
                    "kind": "compute#attachedDisk",
                    "type": "PERSISTENT",
                    "mode": "READ_WRITE",
                    "source": boot_disk["selfLink"],
                    "deviceName": "persistent-disk-0",
                    "index": 0,
                    "boot": True,
                    "autoDelete": bool(boot[0].get("autoDelete", False)),
                    "diskSizeGb": boot_disk["sizeGb"],
                }
            ],
            "metadata": {
                "kind": "compute#metadata",
                "fingerprint": _fingerprint(),
                "items": body.get("metadata", {}).get("items", []),
            },
            "labels": body.get("labels", {}),
            "labelFingerprint": _fingerprint(),
            "selfLink": f"{API}/{link}",
        }
        zone.instances[name] = instance
        zone.disks[name] = boot_disk

        def running() -> None:
            instance["status"] = "RUNNING"

        def rollback() -> None:
            zone.instances.pop(name, None)
            zone.disks.pop(name, None)

        return self._new_operation(prefix, "insert", link, instance_id, running, rollback)

    def _delete_instance(self, zone: Zone, prefix: str, name: str) -> dict[str, Any]:
        link = f"{prefix}/instances/{name}"
        instance = zone.instances.get(name)
        if instance is None:
            raise _not_found("instance", link)
        instance["status"] = "STOPPING"

        def gone() -> None:
            zone.instances.pop(name, None)
            for attached in instance["disks"]:
                disk_name = attached["source"].rsplit("/", 1)[-1]
                disk = zone.disks.get(disk_name)
                if disk is None:
                    continue
                if attached.get("autoDelete"):
                    zone.disks.pop(disk_name, None)
                else:
                    disk["users"] = [u for u in disk.get("users", []) if u != instance["selfLink"]]
                    if not disk["users"]:
                        del disk["users"]

        return self._new_operation(prefix, "delete", link, instance["id"], gone)

    def _set_metadata(
        self, zone: Zone, prefix: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        link = f"{prefix}/instances/{name}"
        instance = zone.instances.get(name)
        if instance is None:
            raise _not_found("instance", link)
        if body.get("fingerprint") != instance["metadata"]["fingerprint"]:
            raise ApiError(
                412,
                "conditionNotMet",
                "Supplied fingerprint does not match current metadata fingerprint.",
            )

        def apply() -> None:
            instance["metadata"] = {
                "kind": "compute#metadata",
                "fingerprint": _fingerprint(),
                "items": body.get("items", []),
            }

        return self._new_operation(prefix, "setMetadata", link, instance["id"], apply)

    def _set_labels(
        self, zone: Zone, prefix: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        link = f"{prefix}/disks/{name}"
        disk = zone.disks.get(name)
        if disk is None:
            raise _not_found("disk", link)
        if body.get("labelFingerprint") != disk["labelFingerprint"]:
            raise ApiError(
                412,
                "conditionNotMet",
                "Labels fingerprint either invalid or resource labels have changed",
            )
        labels = body.get("labels", {})
        self._check_labels(labels)

        def apply() -> None:
            disk["labels"] = dict(labels)
            disk["labelFingerprint"] = _fingerprint()
            if not labels:
                del disk["labels"]

        return self._new_operation(prefix, "setLabels", link, disk["id"], apply)

    def _attach(self, zone: Zone, prefix: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        link = f"{prefix}/instances/{name}"
        instance = zone.instances.get(name)
        if instance is None:
            raise _not_found("instance", link)
        source = body.get("source", "")
        disk_name = source.rsplit("/", 1)[-1]
        disk = zone.disks.get(disk_name)
        if disk is None or f"{prefix}/disks/{disk_name}" not in source:
            raise _not_found("disk", f"{prefix}/disks/{disk_name}")
        if disk.get("users") and body.get("mode", "READ_WRITE") == "READ_WRITE":
            raise ApiError(
                400,
                "resourceInUseByAnotherResource",
                f"The disk resource '{prefix}/disks/{disk_name}' is already being used by "
                f"'{disk['users'][0].split('/compute/v1/')[-1]}'",
            )
        device = body.get("deviceName") or f"persistent-disk-{len(instance['disks'])}"
        if any(d["deviceName"] == device for d in instance["disks"]):
            raise ApiError(
                400, "invalid", f"Invalid value for field 'resource.deviceName': '{device}'"
            )

        def apply() -> None:
            instance["disks"].append(
                {
                    "kind": "compute#attachedDisk",
                    "type": "PERSISTENT",
                    "mode": body.get("mode", "READ_WRITE"),
                    "source": disk["selfLink"],
                    "deviceName": device,
                    "index": len(instance["disks"]),
                    "boot": False,
                    "autoDelete": bool(body.get("autoDelete", False)),
                    "diskSizeGb": disk["sizeGb"],
                }
            )
            disk["users"] = [*disk.get("users", []), instance["selfLink"]]

        return self._new_operation(prefix, "attachDisk", link, instance["id"], apply)

    def _detach(self, zone: Zone, prefix: str, name: str, device: str) -> dict[str, Any]:
        link = f"{prefix}/instances/{name}"
        instance = zone.instances.get(name)
        if instance is None:
            raise _not_found("instance", link)
        attached = [d for d in instance["disks"] if d["deviceName"] == device]
        if not attached:
            raise ApiError(400, "invalid", f"No attached disk found with device name '{device}'")

        def apply() -> None:
            instance["disks"] = [d for d in instance["disks"] if d["deviceName"] != device]
            disk = zone.disks.get(attached[0]["source"].rsplit("/", 1)[-1])
            if disk is not None:
                disk["users"] = [u for u in disk.get("users", []) if u != instance["selfLink"]]
                if not disk["users"]:
                    del disk["users"]

        return self._new_operation(prefix, "detachDisk", link, instance["id"], apply)

    def _disk_body(
        self,
        prefix: str,
        name: str,
        *,
        size_gb: int,
        disk_type: str,
        labels: dict[str, str],
        description: str,
    ) -> dict[str, Any]:
        body = {
            "kind": "compute#disk",
            "id": str(next(self._ids)),
            "creationTimestamp": _now(),
            "name": name,
            "sizeGb": str(size_gb),
            "zone": f"{API}/{prefix}",
            "status": "CREATING",
            "selfLink": f"{API}/{prefix}/disks/{name}",
            "type": f"{API}/{prefix}/diskTypes/{disk_type.rsplit('/', 1)[-1]}",
            "labelFingerprint": _fingerprint(),
        }
        if labels:
            body["labels"] = labels
        if description:
            body["description"] = description
        return body

    def _insert_disk(
        self, zone: Zone, prefix: str, body: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        name = body.get("name", "")
        self._check_name(name)
        self._check_labels(body.get("labels", {}))
        link = f"{prefix}/disks/{name}"
        if name in zone.disks:
            raise ApiError(409, "alreadyExists", f"The resource '{link}' already exists")
        try:
            size_gb = int(body.get("sizeGb", "500"))
        except ValueError as error:
            raise ApiError(400, "invalid", "Invalid value for field 'resource.sizeGb'") from error
        if size_gb <= 0:
            raise ApiError(
                400, "invalid", f"Invalid value for field 'resource.sizeGb': '{size_gb}'"
            )
        source = body.get("sourceSnapshot", "")
        if source:
            project = prefix.split("/")[1]
            snapshot = self.zones.get((project, "global"), Zone()).snapshots.get(
                source.rsplit("/", 1)[-1]
            )
            if snapshot is None:
                raise _not_found("snapshot", source)
            if size_gb < int(snapshot["diskSizeGb"]):
                raise ApiError(
                    400, "invalid", "Requested disk size cannot be smaller than the snapshot size"
                )
        disk = self._disk_body(
            prefix,
            name,
            size_gb=size_gb,
            disk_type=body.get("type", "pd-standard"),
            labels=body.get("labels", {}),
            description=body.get("description", ""),
        )
        zone.disks[name] = disk

        def ready() -> None:
            disk["status"] = "READY"

        def rollback() -> None:
            zone.disks.pop(name, None)

        return self._new_operation(prefix, "insert", link, disk["id"], ready, rollback)

    def _delete_disk(self, zone: Zone, prefix: str, name: str) -> dict[str, Any]:
        link = f"{prefix}/disks/{name}"
        disk = zone.disks.get(name)
        if disk is None:
            raise _not_found("disk", link)
        if disk.get("users"):
            raise ApiError(
                400,
                "resourceInUseByAnotherResource",
                f"The disk resource '{link}' is already being used by "
                f"'{disk['users'][0].split('/compute/v1/')[-1]}'",
            )
        disk["status"] = "DELETING"

        def gone() -> None:
            zone.disks.pop(name, None)

        return self._new_operation(prefix, "delete", link, disk["id"], gone)

    def _create_snapshot(
        self, zone: Zone, prefix: str, project: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        link = f"{prefix}/disks/{name}"
        disk = zone.disks.get(name)
        if disk is None:
            raise _not_found("disk", link)
        snapshot_name = body.get("name", "")
        self._check_name(snapshot_name)
        self._check_labels(body.get("labels", {}))
        snapshots = self.zones.setdefault((project, "global"), Zone()).snapshots
        snapshot_link = f"projects/{project}/global/snapshots/{snapshot_name}"
        if snapshot_name in snapshots:
            raise ApiError(409, "alreadyExists", f"The resource '{snapshot_link}' already exists")
        snapshot = {
            "kind": "compute#snapshot",
            "id": str(next(self._ids)),
            "creationTimestamp": _now(),
            "name": snapshot_name,
            "status": "CREATING",
            "sourceDisk": f"{API}/{link}",
            "diskSizeGb": disk["sizeGb"],
            "selfLink": f"{API}/{snapshot_link}",
            "labelFingerprint": _fingerprint(),
            **({"labels": body["labels"]} if body.get("labels") else {}),
            **({"description": body["description"]} if body.get("description") else {}),
        }
        snapshots[snapshot_name] = snapshot

        def ready() -> None:
            snapshot["status"] = "READY"

        def rollback() -> None:
            snapshots.pop(snapshot_name, None)

        return self._new_operation(prefix, "createSnapshot", link, disk["id"], ready, rollback)

    def _delete_snapshot(self, zone: Zone, prefix: str, name: str) -> dict[str, Any]:
        link = f"{prefix}/snapshots/{name}"
        snapshot = zone.snapshots.get(name)
        if snapshot is None:
            raise _not_found("snapshot", link)
        snapshot["status"] = "DELETING"

        def gone() -> None:
            zone.snapshots.pop(name, None)

        return self._new_operation(prefix, "delete", link, snapshot["id"], gone)

    def _resize(self, zone: Zone, prefix: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        link = f"{prefix}/disks/{name}"
        disk = zone.disks.get(name)
        if disk is None:
            raise _not_found("disk", link)
        size_gb = int(body.get("sizeGb", "0"))
        if size_gb <= int(disk["sizeGb"]):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'sizeGb': '{size_gb}'. New disk size must be larger "
                f"than the current size ({disk['sizeGb']} GB).",
            )

        def apply() -> None:
            disk["sizeGb"] = str(size_gb)

        return self._new_operation(prefix, "resize", link, disk["id"], apply)


def _parse_filter(expression: str) -> list[Callable[[dict[str, Any]], bool]]:
    """The subset of the list filter syntax GCE documents for labels and fields:
    ``(labels.k = "v") AND (name != x)``."""
    if not expression.strip():
        return []
    matchers: list[Callable[[dict[str, Any]], bool]] = []
    for term in re.split(r"\s+AND\s+", expression.strip()):
        match = FILTER_TERM.match(term.strip())
        if match is None:
            raise ApiError(400, "invalid", f"Invalid list filter expression '{expression}'.")
        field_path, operator, literal = match.groups()
        literal = literal.strip('"')

        def value_of(resource: dict[str, Any], path: str = field_path) -> Any:
            current: Any = resource
            for part in path.split("."):
                current = current.get(part) if isinstance(current, dict) else None
            return current

        def matcher(
            resource: dict[str, Any], op: str = operator, lit: str = literal, get: Any = value_of
        ) -> bool:
            value = get(resource)
            equal = value is not None and str(value) == lit
            return equal if op == "=" else not equal

        matchers.append(matcher)
    return matchers


def service_account_key(client_email: str, token_uri: str, project_id: str) -> tuple[str, str]:
    """A fresh service account key: (the JSON the provider gets, the public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": base64.b16encode(random.randbytes(20)).decode().lower(),
        "private_key": private_pem,
        "client_email": client_email,
        "client_id": str(random.randrange(10**20, 10**21)),
        "token_uri": token_uri,
    }
    return json.dumps(info), public_pem
