"""Docker clients for engines on cloud VMs: TLS over TCP with client certificates.

Why not SSH: the operator runs in a pod with no SSH agent or known_hosts to manage, docker-py's
SSH transport shells out to ``ssh`` or pulls in paramiko, and every VM would need a login user.
dockerd's own ``--tlsverify`` listener needs only three PEM strings from a Secret, verifies both
ends, and each request is a plain HTTPS call the SDK already speaks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import docker
import docker.tls

from dockyard.providers.base import PermanentError

CA_KEY = "docker_tls_ca"
CERT_KEY = "docker_tls_cert"
KEY_KEY = "docker_tls_key"
DEFAULT_PORT = 2376
# Pinned so that building a client does not call the VM: the first real request does. 1.41 is
# Docker 20.10, the oldest engine a stemcell is expected to run.
DEFAULT_API_VERSION = "1.41"


class DockerTLS:
    """Holds the client certificate files (a private temp dir, mode 0600) for one provider."""

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        port: int = DEFAULT_PORT,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float = 30.0,
    ) -> None:
        self._pems = {name: credentials.get(name, "") for name in (CA_KEY, CERT_KEY, KEY_KEY)}
        self.port = port
        self.api_version = api_version
        self.timeout = timeout
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DockerTLS(port={self.port}, files={self._dir})"

    def _files(self) -> Path:
        with self._lock:
            if self._dir is not None:
                return self._dir
            missing = [name for name, pem in self._pems.items() if not pem.strip()]
            if missing:
                raise PermanentError(
                    "credentials: "
                    + ", ".join(missing)
                    + " missing: Docker engines on cloud VMs are reached over TLS with a client "
                    "certificate (PEM strings)"
                )
            folder = Path(tempfile.mkdtemp(prefix="dockyard-docker-tls-"))  # mode 0700
            for name, pem in self._pems.items():
                path = folder / f"{name}.pem"
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as file:
                    file.write(pem)
            self._dir = folder
            return folder

    def client(self, address: str) -> docker.DockerClient:
        folder = self._files()
        tls = docker.tls.TLSConfig(
            client_cert=(str(folder / f"{CERT_KEY}.pem"), str(folder / f"{KEY_KEY}.pem")),
            ca_cert=str(folder / f"{CA_KEY}.pem"),
            verify=True,
        )
        client = docker.DockerClient(
            base_url=f"https://{address}:{self.port}",
            tls=tls,
            version=self.api_version,
            timeout=int(self.timeout),
        )
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's own CA (and
        # HTTPS_PROXY route a VM's private address through a proxy): only our CA may count.
        client.api.trust_env = False
        return client

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
