"""Who may run what: policy levels for a namespace's Dockyard objects, modelled on Kubernetes'
Pod Security Standards.

- ``privileged``: anything the API accepts.
- ``baseline``: no ``privileged``; only Docker's default capabilities in ``capAdd``; bind
  volumes' ``hostPath`` only under the allowed prefixes (``/var/vcap/data`` unless the operator
  says otherwise) — so never the VM's root, its engine's socket or run directory, or the
  stemcell's system directories.
- ``restricted``: baseline, and no ``hostPath`` at all, a non-root ``user`` on every container,
  no host port below 1024.

A namespace chooses its level with the label ``dockyard.dev/enforce`` (as
``pod-security.kubernetes.io/enforce`` does); without it, the operator's default applies
(``baseline``; ``dockyard run --policy``). Pure functions: the admission webhook refuses with
them, the reconciler stalls with them (an object that got in while the webhook was away).
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dockyard.api.containers import Container
from dockyard.api.models import DeploymentSpec, JobSpec
from dockyard.api.validation import FieldError

LEVEL_LABEL = "dockyard.dev/enforce"


class Level(enum.StrEnum):
    PRIVILEGED = "privileged"
    BASELINE = "baseline"
    RESTRICTED = "restricted"


#: What Docker grants a container by default: baseline lets a container ask for no more.
DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)
#: Where baseline containers may bind VM directories from: Dockyard's per-job data directory.
DEFAULT_ALLOWED_HOST_PATHS = ("/var/vcap/data",)
#: Ports below this need root on the VM: restricted containers do not publish them.
PRIVILEGED_PORTS = 1024


@dataclass(frozen=True)
class Policy:
    """The operator's policy: the default level and the host paths baseline allows."""

    default: Level = Level.BASELINE
    allowed_host_paths: tuple[str, ...] = DEFAULT_ALLOWED_HOST_PATHS

    def level_of(self, labels: dict[str, str] | None) -> Level:
        """A namespace's level, from its labels (an unknown value counts as restricted: a typo
        must not open anything)."""
        value = (labels or {}).get(LEVEL_LABEL)
        if value is None:
            return self.default
        try:
            return Level(value)
        except ValueError:
            return Level.RESTRICTED


def parse_level(text: str) -> Level:
    try:
        return Level(text)
    except ValueError:
        choices = ", ".join(level.value for level in Level)
        raise ValueError(f"policy level {text!r}: choose one of {choices}") from None


def violations(
    spec: DeploymentSpec | JobSpec, level: Level, policy: Policy = Policy()
) -> list[FieldError]:
    """Every field of ``spec`` the level refuses, naming the field and the level."""
    if level is Level.PRIVILEGED:
        return []
    groups: list[tuple[str, Sequence[Container]]] = (
        [(f"spec.jobs[{n}]", job.containers) for n, job in enumerate(spec.jobs)]
        if isinstance(spec, DeploymentSpec)
        else [("spec", spec.containers)]
    )
    return [
        FieldError(field, f"{why} (policy level {level.value})")
        for path, containers in groups
        for index, container in enumerate(containers)
        for field, why in _container(f"{path}.containers[{index}]", container, level, policy)
    ]


def _container(
    path: str, container: Container, level: Level, policy: Policy
) -> Iterable[tuple[str, str]]:
    if container.privileged:
        yield f"{path}.privileged", "privileged containers are not allowed"
    for n, cap in enumerate(container.cap_add):
        if cap.removeprefix("CAP_") not in DEFAULT_CAPABILITIES:
            yield f"{path}.capAdd[{n}]", f"{cap} is beyond Docker's default capabilities"
    for n, bind in enumerate(container.bind_volumes):
        if bind.host_path is None:
            continue  # a directory of its own, made by Dockyard
        field = f"{path}.bindVolumes[{n}].hostPath"
        if level is Level.RESTRICTED:
            yield field, "host paths are not allowed"
        elif not host_path_allowed(bind.host_path, policy.allowed_host_paths):
            allowed = ", ".join(policy.allowed_host_paths) or "nowhere"
            yield field, f"{bind.host_path} is not under an allowed host path ({allowed})"
    if level is not Level.RESTRICTED:
        return
    if not _non_root(container.user):
        yield f"{path}.user", "a non-root user (a uid other than 0, or a name other than root)"
    for n, port in enumerate(container.ports):
        if port.host_port is not None and port.host_port < PRIVILEGED_PORTS:
            yield f"{path}.ports[{n}].hostPort", f"host ports below {PRIVILEGED_PORTS}"


def host_path_allowed(path: str, allowed: Iterable[str]) -> bool:
    """Whether ``path`` (as written: no '..' games) lies in one of the ``allowed`` prefixes."""
    clean = posixpath.normpath(path)
    if clean != path.rstrip("/") or ".." in path.split("/"):
        return False
    bases = [root.rstrip("/") for root in allowed]
    return any(clean == base or clean.startswith(base + "/") for base in bases)


def _non_root(user: str | None) -> bool:
    if not user:
        return False  # the image's user: root for most images
    name = user.split(":", 1)[0]
    return name not in ("0", "root")
