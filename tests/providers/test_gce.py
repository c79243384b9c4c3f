"""GCEProvider beyond the shared contract, on the HTTP fake of the compute API: label encoding,
error mapping (HTTP and operation errors), operations that outlast their deadline, request-id
deduplication and 409s, the service-account flow, mutual TLS to a VM's engine, credentials
that never reach a log line; and a few checks that the fake answers like the real API."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from dockyard.providers import make_provider
from dockyard.providers.base import (
    DiskSpec,
    NotFoundError,
    PermanentError,
    ProviderConfig,
    ShrinkRefusedError,
    TransientError,
    VMSpec,
    VMState,
)
from dockyard.providers.gce import REQUEST_NAMESPACE, GCEProvider, decode_label, encode_label
from tests.providers.conftest import GCE_PROJECT, GCE_ZONE, gce_config, gce_leftovers
from tests.providers.gce_fake import LABEL_VALUE, GCEFake, service_account_key
from tests.waiting import wait_for

ZONE_PATH = f"/compute/v1/projects/{GCE_PROJECT}/zones/{GCE_ZONE}"


@pytest.fixture
def make(gce_fake: GCEFake) -> Iterator[Any]:
    """Build providers on this test's scope; afterwards delete what is left and check."""
    scope = f"t-{uuid.uuid4().hex[:10]}"
    made: list[GCEProvider] = []

    def build(*, credentials: dict[str, str] | None = None, **options: str) -> GCEProvider:
        provider = GCEProvider(
            gce_config(gce_fake, scope, options=options, credentials=credentials)
        )
        made.append(provider)
        return provider

    yield build
    gce_fake.faults.clear()
    gce_fake.service_accounts.clear()  # no authentication needed to clean up
    gce_fake.release_operations()
    if made:
        for vm in made[0].find_vms({}):
            made[0].delete_vm(vm.id)
        for disk in made[0].find_disks({}):
            made[0].delete_disk(disk.id)
    for provider in made:
        provider.close()
    assert gce_leftovers(gce_fake) == []


def tags(**extra: str) -> dict[str, str]:
    return {"owner-uid": str(uuid.uuid4()), "index": "0", **extra}


def inserts(fake: GCEFake, collection: str) -> list[Any]:
    return [
        r for r in fake.requests if r.method == "POST" and r.path == f"{ZONE_PATH}/{collection}"
    ]


# --- configuration and registry ------------------------------------------------------------------


def test_registry_finds_the_gce_provider(gce_fake: GCEFake) -> None:
    provider = make_provider(gce_config(gce_fake, "registry"))
    try:
        assert isinstance(provider, GCEProvider)
    finally:
        provider.close()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (ProviderConfig(type="gce", endpoint="http://127.0.0.1:9"), "spec.provider.zone"),
        (
            ProviderConfig(type="gce", zone="europe-west1-b", endpoint="http://127.0.0.1:9"),
            "spec.provider.options.project",
        ),
        (
            ProviderConfig(type="gce", zone="europe-west1-b", options={"project": "p"}),
            "credentials.service_account_json",
        ),
        (
            ProviderConfig(
                type="gce",
                zone="europe-west1-b",
                credentials={"service_account_json": "{not json, secret-value"},
            ),
            "credentials.service_account_json",
        ),
        (
            ProviderConfig(
                type="gce",
                zone="europe-west1-b",
                endpoint="http://127.0.0.1:9",
                options={"project": "p", "operation_timeout": "-1"},
            ),
            "spec.provider.options.operation_timeout",
        ),
        (
            ProviderConfig(
                type="gce",
                zone="europe-west1-b",
                endpoint="http://127.0.0.1:9",
                options={"project": "p", "subnet": "s"},
            ),
            "spec.provider.options.subnet",
        ),
    ],
)
def test_bad_configuration_names_the_field(config: ProviderConfig, field: str) -> None:
    with pytest.raises(PermanentError, match=field.replace(".", r"\.")) as raised:
        GCEProvider(config)
    assert "secret-value" not in str(raised.value)


def test_a_vm_needs_an_image(make: Any) -> None:
    with pytest.raises(PermanentError, match=r"spec\.provider\.options\.image"):
        make(image="").create_vm(VMSpec(tags=tags()))


# --- labels --------------------------------------------------------------------------------------


@given(st.text(max_size=80))
def test_label_values_follow_gce_rules_and_decode_back(value: str) -> None:
    encoded = encode_label(value)
    assert LABEL_VALUE.match(encoded), encoded
    decoded = decode_label(encoded)
    assert decoded is None or decoded == value
    if len(value.encode()) <= 21:  # even fully escaped (3 characters a byte) it fits
        assert decoded == value


def test_tags_gce_cannot_hold_as_labels_survive_a_round_trip(make: Any, gce_fake: GCEFake) -> None:
    provider = make()
    odd = tags(deployment="Shop.EU_west", job="x" * 200, disk="Ünïcode / spaces")
    vm = provider.create_vm(VMSpec(tags=odd))
    assert dict(vm.tags) == odd
    assert [dict(found.tags) for found in provider.find_vms(odd)] == [odd]
    assert provider.find_vms({**odd, "job": "x" * 199}) == []
    (instance,) = gce_fake.all_instances()
    assert all(LABEL_VALUE.match(v) for v in instance["labels"].values())
    disk = provider.create_disk(DiskSpec(tags=odd, size_mib=1024))
    assert [dict(d.tags) for d in provider.find_disks(odd)] == [odd]
    provider.delete_disk(disk.id)
    provider.delete_vm(vm.id)


# --- error mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "expected", "retry_after"),
    [
        (429, "rateLimitExceeded", TransientError, 10.0),
        (503, "backendError", TransientError, 15.0),
        (403, "quotaExceeded", TransientError, 300.0),
        (403, "forbidden", PermanentError, None),
        (400, "invalid", PermanentError, None),
        (401, "authError", PermanentError, None),
    ],
)
def test_http_errors_map_to_typed_errors(
    make: Any,
    gce_fake: GCEFake,
    status: int,
    reason: str,
    expected: type[Exception],
    retry_after: float | None,
) -> None:
    provider = make()
    gce_fake.fail_next(status, reason, method="POST", path_contains="/instances")
    # 401: the client library first tries to refresh its (anonymous) credentials.
    with pytest.raises(expected, match=f"{status}|service_account_json") as raised:
        provider.create_vm(VMSpec(tags=tags()))
    if retry_after is not None:
        assert isinstance(raised.value, TransientError)
        assert raised.value.retry_after == retry_after
    assert gce_fake.all_instances() == []
    provider.delete_vm(provider.create_vm(VMSpec(tags=tags())).id)  # the fault was one call


def test_an_unreachable_endpoint_is_transient() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = GCEProvider(
        ProviderConfig(
            type="gce",
            zone=GCE_ZONE,
            endpoint=f"http://127.0.0.1:{port}",
            options={"project": GCE_PROJECT, "retry_timeout": "0"},
        )
    )
    try:
        with pytest.raises(TransientError, match="cannot reach Compute Engine"):
            provider.find_vms({})
    finally:
        provider.close()


def test_one_unavailable_answer_is_retried(make: Any, gce_fake: GCEFake) -> None:
    provider = make(retry_timeout="10")
    gce_fake.fail_next(503, "backendError", method="GET", path_contains="/instances")
    assert provider.find_vms({}) == []
    lists = [r for r in gce_fake.requests if r.method == "GET" and r.path.endswith("/instances")]
    assert len(lists) == 2


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        ("QUOTA_EXCEEDED", 403, TransientError),
        ("ZONE_RESOURCE_POOL_EXHAUSTED", 503, TransientError),
        ("INVALID_FIELD_VALUE", 400, PermanentError),
    ],
)
def test_operation_errors_map_to_typed_errors(
    make: Any, gce_fake: GCEFake, code: str, http_status: int, expected: type[Exception]
) -> None:
    provider = make()
    gce_fake.fail_next_operation(code, f"the zone said {code}", http_status)
    with pytest.raises(expected, match=code):
        provider.create_vm(VMSpec(tags=tags()))
    assert gce_fake.all_instances() == [], "a failed insert leaves nothing"
    provider.delete_vm(provider.create_vm(VMSpec(tags=tags())).id)


def test_a_stale_metadata_fingerprint_is_read_again(make: Any, gce_fake: GCEFake) -> None:
    provider = make()
    vm = provider.create_vm(VMSpec(tags=tags(), metadata={"a": "1"}))
    gce_fake.fail_next(412, "conditionNotMet", method="POST", path_contains="/setMetadata")
    provider.set_vm_metadata(vm.id, {"b": "2"})
    (instance,) = gce_fake.all_instances()
    items = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
    assert items["a"] == "1" and items["b"] == "2"
    assert json.loads(items["dockyard-tags"]) == dict(vm.tags)
    with pytest.raises(PermanentError, match="reserved"):
        provider.set_vm_metadata(vm.id, {"dockyard-tags": "{}"})
    provider.delete_vm(vm.id)


# --- operations that take their time -------------------------------------------------------------


def test_an_insert_that_outlasts_its_deadline_is_transient_and_not_repeated(
    make: Any, gce_fake: GCEFake
) -> None:
    provider = make(operation_timeout="0.3")
    spec = VMSpec(tags=tags())
    with gce_fake.operations_held():
        with pytest.raises(TransientError, match="still RUNNING"):
            provider.create_vm(spec)
        (vm,) = provider.find_vms(spec.tags)
        assert vm.state is VMState.PENDING  # PROVISIONING while its insert runs
        # The operator restarts and tries again while the insert still runs.
        assert make(operation_timeout="0.3").create_vm(spec).id == vm.id
    assert provider.create_vm(spec).id == vm.id
    assert provider.vm_state(vm.id) is VMState.RUNNING
    assert len(inserts(gce_fake, "instances")) == 1
    provider.delete_vm(vm.id)


def test_a_resize_that_outlasts_its_deadline_completes_on_retry(
    make: Any, gce_fake: GCEFake
) -> None:
    provider = make(operation_timeout="0.3", min_disk_gb="1")
    disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    with gce_fake.operations_held():
        with pytest.raises(TransientError, match="still RUNNING"):
            provider.resize_disk(disk.id, 3072)
        assert provider.find_disks({})[0].size_mib == 1024  # not grown until done
    assert provider.resize_disk(disk.id, 3072).size_mib == 3072
    resizes = [r for r in gce_fake.requests if r.path.endswith("/resize")]
    assert len(resizes) == 1, "the finished grow is not sent again"
    provider.delete_disk(disk.id)


def test_inserts_carry_a_request_id_of_the_identity(make: Any, gce_fake: GCEFake) -> None:
    provider = make()
    spec = VMSpec(tags=tags())
    vm = provider.create_vm(spec)
    # Another process whose list lags behind: its insert repeats the request id, and the API
    # answers with the first operation instead of a second VM.
    gce_fake.stale_lists(1)
    assert make().create_vm(spec).id == vm.id
    ids = [r.query["requestId"] for r in inserts(gce_fake, "instances")]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert uuid.UUID(ids[0]).version == 5
    mutations = [r for r in gce_fake.requests if r.method in ("POST", "DELETE")]
    mutations = [r for r in mutations if "/operations/" not in r.path]
    assert [r.path for r in mutations if "requestId" not in r.query] == []
    assert len(gce_fake.all_instances()) == 1
    provider.delete_vm(vm.id)


def test_a_duplicate_name_409_means_it_exists(make: Any, gce_fake: GCEFake) -> None:
    provider = make()
    spec = VMSpec(tags=tags())
    vm = provider.create_vm(spec)
    gce_fake.forget_request_ids()  # beyond the deduplication window
    gce_fake.stale_lists(1)
    assert make().create_vm(spec).id == vm.id
    assert len(gce_fake.all_instances()) == 1
    provider.delete_vm(vm.id)


def test_a_name_taken_by_something_else_is_permanent(make: Any, gce_fake: GCEFake) -> None:
    provider = make()
    spec = VMSpec(tags=tags())
    name = provider._name("vm", spec.tags)  # the name create_vm derives from the identity
    squatter = {
        "name": name,
        "labels": {"owner": "someone-else"},
        "disks": [{"boot": True, "autoDelete": True, "initializeParams": {"sourceImage": "i"}}],
    }
    assert _call(gce_fake, "POST", f"{ZONE_PATH}/instances", squatter)[0] == 200
    with pytest.raises(PermanentError, match=f"{name} is taken"):
        provider.create_vm(spec)
    assert _call(gce_fake, "DELETE", f"{ZONE_PATH}/instances/{name}")[0] == 200
    assert gce_fake.all_instances() == [] or wait_until_empty(gce_fake)


def wait_until_empty(fake: GCEFake) -> bool:
    return bool(wait_for(lambda: fake.all_instances() == [], timeout=5, what="squatter gone"))


def test_the_10_gb_floor_is_a_minimum_not_a_shrink(make: Any) -> None:
    provider = make()
    disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    assert disk.size_mib == 10 * 1024
    assert provider.resize_disk(disk.id, 1024).size_mib == 10 * 1024  # the same request again
    assert provider.resize_disk(disk.id, 11 * 1024).size_mib == 11 * 1024
    with pytest.raises(ShrinkRefusedError):
        provider.resize_disk(disk.id, 10 * 1024)
    provider.delete_disk(disk.id)


def test_deleting_an_attached_disk_detaches_it_first(make: Any, gce_fake: GCEFake) -> None:
    provider = make()
    vm = provider.create_vm(VMSpec(tags=tags()))
    disk = provider.create_disk(DiskSpec(tags=tags(disk="a"), size_mib=1024))
    attachment = provider.attach_disk(vm.id, disk.id)
    assert attachment.device == f"/dev/disk/by-id/google-{disk.id}"
    provider.delete_disk(disk.id)
    (instance,) = gce_fake.all_instances()
    assert [d["deviceName"] for d in instance["disks"]] == ["persistent-disk-0"]
    with pytest.raises(NotFoundError):
        provider.detach_disk(vm.id, disk.id)
    provider.delete_vm(vm.id)


# --- credentials ---------------------------------------------------------------------------------


def test_service_account_credentials_authenticate_and_never_leak(
    make: Any, gce_fake: GCEFake, caplog: pytest.LogCaptureFixture
) -> None:
    email = "dockyard@dockyard-test.iam.gserviceaccount.com"
    key_json, public_pem = service_account_key(email, gce_fake.token_uri, GCE_PROJECT)
    gce_fake.trust_service_account(email, public_pem)
    canary = f"canary{uuid.uuid4().hex}"
    credentials = {
        "service_account_json": key_json,
        "docker_tls_key": f"-----BEGIN PRIVATE KEY-----\n{canary}\n-----END PRIVATE KEY-----",
    }
    caplog.set_level(logging.DEBUG)
    provider = make(credentials=credentials, project="")  # the project comes from the key
    assert provider.project == GCE_PROJECT
    vm = provider.create_vm(VMSpec(tags=tags()))
    gce_fake.fail_next(403, "forbidden", method="DELETE")
    with pytest.raises(PermanentError) as raised:
        provider.delete_vm(vm.id)
    provider.delete_vm(vm.id)

    # Every call was authenticated as the service account (the fake answers 401 otherwise),
    # by a token from the token endpoint or a JWT the key signed itself.
    assert gce_fake.tokens or gce_fake.self_signed_issuers == {email}
    assert all(r.authorization for r in gce_fake.requests)
    info = json.loads(key_json)
    secrets = [canary, info["private_key_id"], *gce_fake.tokens, *gce_fake.bearers]
    secrets += [line for line in info["private_key"].splitlines() if "PRIVATE KEY" not in line]
    for text in (caplog.text, repr(provider), str(raised.value)):
        for secret in secrets:
            assert secret not in text


def test_an_unknown_service_account_is_a_permanent_error(make: Any, gce_fake: GCEFake) -> None:
    key_json, public_pem = service_account_key("a@p.iam", gce_fake.token_uri, GCE_PROJECT)
    gce_fake.trust_service_account("someone-else@p.iam", public_pem)
    provider = make(credentials={"service_account_json": key_json})
    with pytest.raises(PermanentError, match="service_account_json"):
        provider.find_vms({})


# --- Docker over mutual TLS ----------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ip: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def _pem(item: x509.Certificate | ec.EllipticCurvePrivateKey) -> str:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM).decode()
    return item.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def docker_tls_engine(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A stand-in for a VM's dockerd on 127.0.0.1 with --tlsverify: it answers /version only to
    clients with a certificate of the CA."""
    ca = _issue("dockyard-ca", None)
    server_cert, server_key = _issue("vm", ca, ip="127.0.0.1")
    client_cert, client_key = _issue("dockyard-operator", ca)
    (tmp_path / "server.pem").write_text(_pem(server_cert) + _pem(server_key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    context.load_verify_locations(cadata=_pem(ca[0]))
    context.verify_mode = ssl.CERT_REQUIRED
    peers: list[str] = []

    class Engine(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            peers.append(dict(x[0] for x in peer["subject"])["commonName"])
            body = json.dumps({"ApiVersion": "1.41", "Version": "20.10.24"}).encode()
            self.send_response(200 if self.path.endswith("/version") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    other_ca = _issue("someone-elses-ca", None)
    yield {
        "port": server.server_address[1],
        "peers": peers,
        "credentials": {
            "docker_tls_ca": _pem(ca[0]),
            "docker_tls_cert": _pem(client_cert),
            "docker_tls_key": _pem(client_key),
        },
        "wrong_ca": _pem(other_ca[0]),
    }
    server.shutdown()
    server.server_close()


def test_docker_client_reaches_the_vm_engine_over_mutual_tls(
    make: Any, gce_fake: GCEFake, docker_tls_engine: dict[str, Any]
) -> None:
    gce_fake.network_ips = iter(["127.0.0.1"])
    port = str(docker_tls_engine["port"])
    provider = make(credentials=docker_tls_engine["credentials"], docker_port=port)
    vm = provider.create_vm(VMSpec(tags=tags()))
    assert vm.address == "127.0.0.1"
    client = provider.docker_client(vm.id)
    assert client.version()["Version"] == "20.10.24"
    assert docker_tls_engine["peers"] == ["dockyard-operator"]
    client.close()

    # A provider that trusts another CA refuses the engine's certificate.
    wrong = {**docker_tls_engine["credentials"], "docker_tls_ca": docker_tls_engine["wrong_ca"]}
    suspicious = make(credentials=wrong, docker_port=port)
    client = suspicious.docker_client(vm.id)
    with pytest.raises(Exception, match=r"(?i)certificate verify failed"):
        client.version()
    client.close()
    provider.delete_vm(vm.id)


# --- the fake answers like the API ---------------------------------------------------------------


def _call(fake: GCEFake, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(fake.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_fake_speaks_the_compute_api(gce_fake: GCEFake) -> None:
    request_id = str(uuid.uuid5(REQUEST_NAMESPACE, "fake"))
    disk = {"name": "d1", "sizeGb": "20", "labels": {"dockyard-scope": "x"}}
    status, op = _call(gce_fake, "POST", f"{ZONE_PATH}/disks?requestId={request_id}", disk)
    assert status == 200 and op["status"] == "RUNNING" and isinstance(op["id"], str)
    assert _call(gce_fake, "POST", f"{ZONE_PATH}/disks?requestId={request_id}", disk)[1] == op
    assert _call(gce_fake, "POST", f"{ZONE_PATH}/disks", disk)[0] == 409
    _, done = _call(gce_fake, "POST", f"{ZONE_PATH}/operations/{op['name']}/wait")
    assert done["status"] == "DONE" and done["progress"] == 100
    _, got = _call(gce_fake, "GET", f"{ZONE_PATH}/disks/d1")
    assert (got["sizeGb"], got["status"]) == ("20", "READY")
    assert _call(gce_fake, "POST", f"{ZONE_PATH}/disks/d1/resize", {"sizeGb": "10"})[0] == 400
    assert _call(gce_fake, "GET", f"{ZONE_PATH}/disks/nope")[0] == 404
    assert _call(gce_fake, "GET", f"{ZONE_PATH}/operations/nope")[0] == 404
    _, listed = _call(
        gce_fake,
        "GET",
        f"{ZONE_PATH}/disks?filter=" + urllib.parse.quote('labels.dockyard-scope = "y"'),
    )
    assert "items" not in listed
    assert _call(gce_fake, "GET", f"{ZONE_PATH}/disks?filter=labels.a%20~%20b")[0] == 400
    assert _call(gce_fake, "DELETE", f"{ZONE_PATH}/disks/d1")[0] == 200
