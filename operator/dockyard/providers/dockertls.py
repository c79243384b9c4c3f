"""Docker clients for engines on cloud VMs: TLS over TCP with client certificates.

Why not SSH: the operator runs in a pod with no SSH agent or known_hosts to manage, docker-py's
SSH transport shells out to ``ssh`` or pulls in paramiko, and every VM would need a login user.
dockerd's own ``--tlsverify`` listener needs only three PEM strings from a Secret, verifies both
ends, and each request is a plain HTTPS call the SDK already speaks.

Two ways to trust an engine:
- *issued* (the operator's CA in ``engine_ca_cert``/``engine_ca_key``, see ``engineca.py``): each
  VM gets its own server certificate for a name made for it (``issue_for_vm``); the client checks
  the engine's certificate against that name and the CA the VM was made with, and presents a
  client certificate of that CA (issued here, in memory and a private file). While a new CA
  replaces an old one, VMs made with the old one are reached with the old one's pair.
- *static* (``docker_tls_ca``/``docker_tls_cert``/``docker_tls_key``): one client pair for every
  VM of an image that brings its own server certificate; the address is what is checked.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import json
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.tls
import requests.adapters

from dockyard.providers import bootstrap, engineca
from dockyard.providers.base import PermanentError, TransientError

T = TypeVar("T")
R = TypeVar("R")
CA_KEY = "docker_tls_ca"
CERT_KEY = "docker_tls_cert"
KEY_KEY = "docker_tls_key"
DEFAULT_PORT = 2376
# Pinned so that building a client does not call the VM: the first real request does. 1.41 is
# Docker 20.10, the oldest engine a stemcell is expected to run.
DEFAULT_API_VERSION = "1.41"


@dataclass(frozen=True)
class VMCertificate:
    """What a new VM is given: its engine's name, the CA it was made with, its own pair."""

    name: str
    ca_fingerprint: str
    ca_pem: str
    cert_pem: str
    key_pem: str = field(repr=False)


@dataclass(frozen=True)
class VMBoot:
    """What a new VM boots with: its certificate, the user data that installs its engine with it,
    and what of that to mask while the request carrying it is sent."""

    certificate: VMCertificate
    user_data: bytes = field(repr=False)
    secrets: list[str] = field(repr=False)


def map_probing(
    items: Sequence[T], probing: Callable[[T], bool], build: Callable[[T], R]
) -> list[R]:
    """``build`` of each item, side by side when more than one needs an engine probe (VMs
    booting at once: each probe may wait seconds for an address that does not answer yet)."""
    if sum(1 for item in items if probing(item)) < 2:
        return [build(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(build, items))


def user_data_secrets(user_data: bytes, key_pem: str) -> list[str]:
    """A VM's private key as it is and as the SDKs log a request that carries it (botocore
    logs a RunInstances' parameters, the user data in base64, at DEBUG): to be masked while the
    request is sent (``redaction.protected``)."""
    encoded = base64.b64encode(user_data).decode()
    return [key_pem, encoded, urllib.parse.quote_plus(encoded), json.dumps(key_pem)[1:-1]]


class _NamedEngineAdapter(requests.adapters.HTTPAdapter):
    """HTTPS to an address, with the certificate checked against a name (TLS SNI + hostname
    check): a VM's engine certificate names the VM, not its address."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


def _read_cas(credentials: Mapping[str, str]) -> list[engineca.EngineCA]:
    """The operator's CA and, while it replaces one, the previous one (current first)."""
    cas = []
    for cert_key, key_key in (
        (engineca.CA_CERT_KEY, engineca.CA_KEY_KEY),
        (engineca.PREVIOUS_CA_CERT_KEY, engineca.PREVIOUS_CA_KEY_KEY),
    ):
        cert, key = credentials.get(cert_key, ""), credentials.get(key_key, "")
        if not cert.strip() and not key.strip():
            continue
        ca = engineca.EngineCA(cert, key)
        try:
            engineca.load_ca(ca)
        except ValueError as error:
            raise PermanentError(f"credentials.{cert_key}: {error}") from None
        cas.append(ca)
    return cas


class DockerTLS:
    """Client certificate files (a private temp dir, mode 0600) for one provider, and the
    engine certificates of its new VMs."""

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        port: int = DEFAULT_PORT,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float = 30.0,
    ) -> None:
        self._pems = {name: credentials.get(name, "") for name in (CA_KEY, CERT_KEY, KEY_KEY)}
        cas = _read_cas(credentials)
        self._cas = {ca.fingerprint: ca for ca in cas}
        current = bool(credentials.get(engineca.CA_CERT_KEY, "").strip())
        self._current = cas[0] if cas and current else None
        self.port = port
        self.api_version = api_version
        self.timeout = timeout
        self._dir: Path | None = None
        self._static_written = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DockerTLS(port={self.port}, files={self._dir})"

    @property
    def issuing(self) -> bool:
        """Whether new VMs get engine certificates of the operator's CA."""
        return self._current is not None

    @property
    def ca_fingerprint(self) -> str:
        return self._current.fingerprint if self._current is not None else ""

    def issue_for_vm(self, now: datetime.datetime | None = None) -> VMCertificate:
        """A server certificate for a new VM's engine (a fresh name), from the current CA."""
        if self._current is None:
            raise PermanentError(
                f"credentials.{engineca.CA_CERT_KEY}: required to boot a VM from a stock image "
                "(the operator passes its engine CA; or give a stemcell image that brings its "
                "own engine certificate, with credentials docker_tls_ca/cert/key)"
            )
        name = engineca.new_engine_name()
        issued = engineca.issue_server(
            self._current, name, now or datetime.datetime.now(datetime.UTC)
        )
        return VMCertificate(
            name=name,
            ca_fingerprint=self._current.fingerprint,
            ca_pem=self._current.cert_pem,
            cert_pem=issued.cert_pem,
            key_pem=issued.key_pem,
        )

    def boot_for_vm(self, limit: int) -> VMBoot:
        """A new VM's certificate and its user data (at most ``limit`` bytes, the IaaS's)."""
        certificate = self.issue_for_vm()
        try:
            user_data = bootstrap.user_data(
                ca_pem=certificate.ca_pem,
                cert_pem=certificate.cert_pem,
                key_pem=certificate.key_pem,
                port=self.port,
                limit=limit,
            )
        except ValueError as error:
            raise PermanentError(f"user data: {error}") from None
        return VMBoot(certificate, user_data, user_data_secrets(user_data, certificate.key_pem))

    def _folder(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="dockyard-docker-tls-"))  # mode 0700
        return self._dir

    @staticmethod
    def _write(path: Path, pem: str) -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(pem)

    def _issued_files(self, fingerprint: str) -> tuple[Path, Path, Path]:
        """CA, client certificate and key files for engines of the CA ``fingerprint``."""
        ca = self._cas.get(fingerprint)
        if ca is None:
            known = ", ".join(self._cas) or "none"
            raise TransientError(
                f"the VM's engine certificate is of CA {fingerprint}, which the operator no "
                f"longer holds (it holds {known}): the VM is replaced",
                retry_after=60.0,
            )
        with self._lock:
            folder = self._folder()
            paths = tuple(folder / f"{fingerprint}-{part}.pem" for part in ("ca", "cert", "key"))
            if not paths[0].exists():
                client = engineca.issue_client(ca, datetime.datetime.now(datetime.UTC))
                self._write(paths[1], client.cert_pem)
                self._write(paths[2], client.key_pem)
                self._write(paths[0], ca.cert_pem)  # last: its presence means all are there
            return paths[0], paths[1], paths[2]

    def _files(self) -> Path:
        with self._lock:
            if self._static_written and self._dir is not None:
                return self._dir
            missing = [name for name, pem in self._pems.items() if not pem.strip()]
            if missing:
                raise PermanentError(
                    "credentials: "
                    + ", ".join(missing)
                    + " missing: Docker engines on cloud VMs are reached over TLS with a client "
                    "certificate (PEM strings)"
                )
            folder = self._folder()
            for name, pem in self._pems.items():
                self._write(folder / f"{name}.pem", pem)
            self._static_written = True
            return folder

    def client(
        self,
        address: str,
        *,
        engine_name: str = "",
        ca_fingerprint: str = "",
        timeout: float | None = None,
    ) -> docker.DockerClient:
        """A client for the engine at ``address``. With ``engine_name`` (a VM with an issued
        certificate), the engine must show a certificate for that name from the CA
        ``ca_fingerprint``; without, the static pair is used and the address is checked."""
        if engine_name:
            ca, cert, key = self._issued_files(ca_fingerprint)
        else:
            folder = self._files()
            ca, cert, key = (folder / f"{name}.pem" for name in (CA_KEY, CERT_KEY, KEY_KEY))
        tls = docker.tls.TLSConfig(client_cert=(str(cert), str(key)), ca_cert=str(ca), verify=True)
        client = docker.DockerClient(
            base_url=f"https://{address}:{self.port}",
            tls=tls,
            version=self.api_version,
            timeout=int(timeout or self.timeout),
        )
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's own CA (and
        # HTTPS_PROXY route a VM's private address through a proxy): only our CA may count.
        client.api.trust_env = False
        if engine_name:
            client.api.mount("https://", _NamedEngineAdapter(engine_name))
        return client

    def answers(self, address: str, engine_name: str, ca_fingerprint: str) -> bool:
        """Whether the VM's engine answers, with its own certificate (its boot is done)."""
        try:
            client = self.client(
                address, engine_name=engine_name, ca_fingerprint=ca_fingerprint, timeout=3.0
            )
        except TransientError:
            return False
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, requests.RequestException, OSError):
            return False
        finally:
            client.close()

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
                self._static_written = False
