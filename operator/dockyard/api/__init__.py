"""Dockyard's API: the Deployment, Job, PersistentDisk and DiskSnapshot kinds as pydantic models.

- ``models``: the kinds, their specs, and ``parse_deployment/parse_job/parse_persistent_disk``
- ``containers``: a job's containers; ``status``: what the operator reports
- ``conditions``: Ready/Reconciling/Stalled and the one way to write them
- ``quantities``: "1Gi", "5s", "1s-30s", "25%"
- ``validation``: dependency checks CEL cannot express (cycles, cross-job references)
- ``crds``: the CRD YAML generator (``python -m dockyard.api.crds``)
"""

from dockyard.api.conditions import READY, RECONCILING, STALLED, Condition, condition
from dockyard.api.containers import Container
from dockyard.api.models import (
    Deployment,
    DeploymentSpec,
    Job,
    JobSpec,
    JobTemplate,
    PersistentDisk,
    PersistentDiskSpec,
    ProviderSpec,
    parse_deployment,
    parse_job,
    parse_persistent_disk,
)
from dockyard.api.quantities import (
    parse_duration,
    parse_quantity,
    parse_watch_time,
    resolve_max_in_flight,
)
from dockyard.api.validation import FieldError, validate_dependencies, validate_spec

__all__ = [
    "READY",
    "RECONCILING",
    "STALLED",
    "Condition",
    "Container",
    "Deployment",
    "DeploymentSpec",
    "FieldError",
    "Job",
    "JobSpec",
    "JobTemplate",
    "PersistentDisk",
    "PersistentDiskSpec",
    "ProviderSpec",
    "condition",
    "parse_deployment",
    "parse_duration",
    "parse_job",
    "parse_persistent_disk",
    "parse_quantity",
    "parse_watch_time",
    "resolve_max_in_flight",
    "validate_dependencies",
    "validate_spec",
]
