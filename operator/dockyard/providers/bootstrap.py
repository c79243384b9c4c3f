"""What a cloud VM boots with: stock images by name, and the user data (cloud-init) that turns a
stock Debian into a stemcell — Docker and e2fsprogs from Debian's packages, the VM's own engine
certificate, dockerd on 2376 with ``--tlsverify``.

Pure code: no I/O. The same user data serves a baked stemcell (``hack/bake-stemcell.sh`` runs
its script once on a builder VM): the install step finds the packages there and does nothing,
the certificate step still gives the VM its own certificate.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import yaml

# EC2 refuses user data over 16 KiB (before base64); GCE metadata values may be 256 KiB.
EC2_USER_DATA_LIMIT = 16 * 1024
TLS_DIR = "/etc/dockyard/tls"
BOOT_SCRIPT = "/etc/dockyard/boot.sh"
READY_FILE = "/var/lib/dockyard/engine-ready"
BAKE_FILE = "/etc/dockyard/bake"
PACKAGES = ("docker.io", "e2fsprogs", "util-linux")


@dataclass(frozen=True)
class StockImage:
    """An official image, found by name in the region (EC2) or by family (GCE)."""

    name: str
    aws_owner: str
    aws_name_pattern: str
    gce_project: str
    gce_family: str


# Debian's own images: https://wiki.debian.org/Cloud/AmazonEC2Image (owner 136693071363) and
# the debian-cloud project's families on GCE.
STOCK_IMAGES = {
    "debian-12": StockImage(
        name="debian-12",
        aws_owner="136693071363",
        aws_name_pattern="debian-12-amd64-*",
        gce_project="debian-cloud",
        gce_family="debian-12",
    ),
    "debian-12-arm64": StockImage(
        name="debian-12-arm64",
        aws_owner="136693071363",
        aws_name_pattern="debian-12-arm64-*",
        gce_project="debian-cloud",
        gce_family="debian-12-arm64",
    ),
}
DEFAULT_STOCK = "debian-12"


def stock_image(stemcell: str) -> StockImage | None:
    """The stock image a stemcell names (``debian-12``), or None for a custom image id."""
    return STOCK_IMAGES.get(stemcell.strip())


# The script every VM runs once at first boot (cloud-init runcmd). POSIX sh: it must run on any
# Debian-like image. Idempotent: a baked image (or a second run) skips what is there.
SCRIPT = r"""#!/bin/sh
# Dockyard stemcell bootstrap: Docker and e2fsprogs from the distribution, dockerd with mutual
# TLS on the VM's own certificate (written next to this script by cloud-init).
set -eu
PORT="${DOCKYARD_ENGINE_PORT:-__PORT__}"
TLS=__TLS_DIR__
say() {  # the serial console too: GetConsoleOutput / get-serial-port-output show it
  echo "dockyard-boot: $*"; [ -w /dev/console ] && echo "dockyard-boot: $*" >/dev/console || true
}
trap 'say "failed"' EXIT
export DEBIAN_FRONTEND=noninteractive
missing=""
for pkg in __PACKAGES__; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  say "installing$missing"
  # No service starts while installing: the engine starts once, configured.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  n=0
  until apt-get update -q && apt-get install -y -q --no-install-recommends $missing; do
    n=$((n + 1)); [ "$n" -lt 5 ] || exit 1; sleep $((n * 5))
  done
  rm -f /usr/sbin/policy-rc.d
  apt-get clean
fi
if [ -f __BAKE__ ]; then
  # Baking a stemcell (hack/bake-stemcell.sh): packages only; each VM of the image gets its
  # own certificate from its own user data (cloud-init runs it again for a new instance).
  rm -f __BAKE__
  trap - EXIT
  say "baked: the packages are installed"
  exit 0
fi
chmod 0700 "$TLS"
for f in ca.pem cert.pem key.pem; do [ -s "$TLS/$f" ] || { say "missing $TLS/$f"; exit 1; }; done
OPTS="--tlsverify --tlscacert=$TLS/ca.pem --tlscert=$TLS/cert.pem --tlskey=$TLS/key.pem"
OPTS="$OPTS -H tcp://0.0.0.0:$PORT"
mkdir -p /etc/docker
# Containers keep running while the engine restarts (a package upgrade, a new certificate).
[ -f /etc/docker/daemon.json ] || echo '{"live-restore": true}' >/etc/docker/daemon.json
if [ -d /run/systemd/system ]; then
  # Debian's docker.service: ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS
  echo "DOCKER_OPTS=\"$OPTS\"" >/etc/default/docker
  systemctl daemon-reload
  systemctl enable docker.service >/dev/null 2>&1 || true
  systemctl restart docker.service
else
  # No systemd (a container playing the VM): run the engine directly, with a local socket too.
  [ -s /var/run/docker.pid ] && kill "$(cat /var/run/docker.pid)" 2>/dev/null && sleep 2 || true
  nohup dockerd $OPTS -H unix:///var/run/docker.sock >/var/log/dockerd.log 2>&1 &
fi
n=0
until docker -H unix:///var/run/docker.sock version >/dev/null 2>&1; do
  n=$((n + 1)); [ "$n" -lt 300 ] || { say "the engine did not start"; exit 1; }; sleep 0.5
done
mkdir -p "$(dirname __READY__)" && date -u +%FT%TZ >__READY__
trap - EXIT
say "engine ready on $PORT"
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PEMs, the script) as literal blocks: the user data stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def boot_script(port: int) -> str:
    return (
        SCRIPT.replace("__PORT__", str(port))
        .replace("__TLS_DIR__", TLS_DIR)
        .replace("__PACKAGES__", " ".join(PACKAGES))
        .replace("__READY__", READY_FILE)
        .replace("__BAKE__", BAKE_FILE)
    )


def cloud_config(*, ca_pem: str, cert_pem: str, key_pem: str, port: int) -> str:
    """The cloud-config document: the VM's TLS files and the boot script, run once."""

    def file(path: str, content: str, permissions: str) -> dict[str, str]:
        return {"path": path, "content": content, "owner": "root:root", "permissions": permissions}

    document = {
        "write_files": [
            file(f"{TLS_DIR}/ca.pem", ca_pem, "0644"),
            file(f"{TLS_DIR}/cert.pem", cert_pem, "0644"),
            file(f"{TLS_DIR}/key.pem", key_pem, "0600"),
            file(BOOT_SCRIPT, boot_script(port), "0755"),
        ],
        "runcmd": [[BOOT_SCRIPT]],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1 << 16)


def bake_cloud_config(port: int = 2376) -> str:
    """The user data of a stemcell builder VM: the same boot script, told to install the
    packages and stop there (no certificate: the image is for every VM). A VM made from the
    image is a new instance to cloud-init, which runs that VM's own user data then."""
    document = {
        "write_files": [
            {"path": BAKE_FILE, "content": "bake\n", "permissions": "0644"},
            {"path": BOOT_SCRIPT, "content": boot_script(port), "permissions": "0755"},
        ],
        "runcmd": [[BOOT_SCRIPT], ["sync"]],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1 << 16)


def user_data(*, ca_pem: str, cert_pem: str, key_pem: str, port: int, limit: int) -> bytes:
    """The user data as sent: the cloud-config, gzipped when it is over ``limit`` bytes
    (cloud-init takes gzip as it is). ValueError when even that does not fit."""
    raw = cloud_config(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem, port=port).encode()
    if len(raw) <= limit:
        return raw
    packed = gzip.compress(raw, mtime=0)
    if len(packed) > limit:
        raise ValueError(f"user data is {len(packed)} bytes gzipped; the limit is {limit}")
    return packed
