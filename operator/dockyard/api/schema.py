"""Building blocks of the models: the base class, constrained string types, CRD schema extras.

A field's docstring is its CRD description (what ``kubectl explain`` prints). Every string and
list is bounded (maxLength/maxItems) so the apiserver can bound the cost of CEL rules.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from dockyard.api.quantities import (
    DURATION_PATTERN,
    MAX_DURATION,
    QUANTITY_PATTERN,
    WATCH_TIME_PATTERN,
    parse_duration,
    parse_quantity,
    parse_watch_time,
)

GROUP = "dockyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# "name" (a container of the same job) or "job/name" (a container of another job).
DEPENDENCY_PATTERN = rf"^{_LABEL}(/{_LABEL})?$"

# Bounds that keep CEL cost estimates within the apiserver's budget.
MAX_JOBS = 20
MAX_CONTAINERS = 20
MAX_DEPENDS_ON = 20
MAX_LIST = 64
MAX_INSTANCES = 1000


def rule(
    expression: str,
    message: str | None = None,
    *,
    field_path: str | None = None,
    message_expression: str | None = None,
    reason: str | None = None,
    optional_old_self: bool = False,
) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry. ``optional_old_self``: the rule also runs on
    create, where ``oldSelf`` is an empty optional (``oldSelf.hasValue()`` is false)."""
    entry: dict[str, Any] = {"rule": expression}
    if message:
        entry["message"] = message
    if message_expression:
        entry["messageExpression"] = message_expression
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    if optional_old_self:
        entry["optionalOldSelf"] = True
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def map_list(*keys: str) -> dict[str, Any]:
    """Schema extras for a list whose items are unique by ``keys`` (merged by key on apply)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


SET_LIST: dict[str, Any] = {"x-kubernetes-list-type": "set"}


def _to_str(value: object) -> object:
    # int-or-string fields may come back from the apiserver as integers.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_quantity(value: str) -> str:
    parse_quantity(value)
    return value


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_watch_time(value: str) -> str:
    parse_watch_time(value)
    return value


def int_or_string(pattern: str) -> dict[str, Any]:
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": pattern,
    }


# The pattern admits quantities larger than the int64 Kubernetes (and parse_quantity) can hold.
QUANTITY_RANGE = rule(
    "isQuantity(string(self)) && quantity(string(self)).isLessThan(quantity('8Ei'))",
    "must be a quantity below 8Ei",
)

DnsLabel = Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]
Text = Annotated[str, Field(max_length=253)]
# A NUL byte cannot cross exec(2): the engine accepts it at create and fails every start.
Arg = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00]*$")]
AbsolutePath = Annotated[str, Field(max_length=4096, pattern=r"^/")]

# Docker's image reference grammar (distribution/reference): [domain/]path[:tag][@digest]. The
# first part is a domain only with a '.', a ':port' or as localhost; path parts are lowercase.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (
    rf"(?:localhost(?::[0-9]+)?|{_DOMAIN_PART}(?:\.{_DOMAIN_PART})+(?::[0-9]+)?"
    rf"|{_DOMAIN_PART}:[0-9]+)"
)
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_PATTERN = rf"^(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*(?::{_TAG})?(?:@{_DIGEST})?$"
#: Docker refuses a repository name longer than this; the whole reference is held to it.
MAX_IMAGE = 255
ImageReference = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE, pattern=IMAGE_PATTERN)]

# A path inside a container: absolute, not "/" itself, no "." or ".." part, no empty part, and
# no ':' (the engine's bind syntax is source:target:mode).
_SEGMENT = r"(?:[^./:][^/:]*|\.[^./:][^/:]*|\.\.[^/:]+)"
CONTAINER_PATH_PATTERN = rf"^(?:/{_SEGMENT})+$"
#: Where Dockyard binds its own tools into containers (the probes' busybox).
RESERVED_IN_CONTAINER = "/.dockyard"
# The kernel's own filesystems: runc refuses a mount over /proc, and one over /sys or /dev
# breaks the container.
_NOT_OVER = ("/proc", "/sys", "/dev", RESERVED_IN_CONTAINER)
_OVER = " || ".join(f"self == '{p}' || self.startsWith('{p}/')" for p in _NOT_OVER)
CONTAINER_PATH_RULE = rule(
    f"!({_OVER})",
    f"must not be or lie under {', '.join(_NOT_OVER)} (the kernel's and Dockyard's own)",
)


def _check_container_path(value: str) -> str:
    for reserved in _NOT_OVER:
        if value == reserved or value.startswith(reserved + "/"):
            raise ValueError(
                f"must not be or lie under {', '.join(_NOT_OVER)} (the kernel's and Dockyard's own)"
            )
    return value


ContainerPath = Annotated[
    str,
    Field(
        max_length=4096,
        pattern=CONTAINER_PATH_PATTERN,
        json_schema_extra=validations(CONTAINER_PATH_RULE),
    ),
    AfterValidator(_check_container_path),
]
#: A directory of the VM: absolute, "/" allowed, no ':' (the bind syntax).
HostPath = Annotated[str, Field(max_length=4096, pattern=r"^/[^:]*$")]
# Durations Go cannot hold fail CEL's duration() conversion, which rejects them too.
_DURATION_BOUND = rule(
    f"duration(self) <= duration('{MAX_DURATION}')", f"must be a duration of at most {MAX_DURATION}"
)
_WATCH_TIME_RULES = validations(
    rule(
        f"self.split('-').all(d, duration(d) <= duration('{MAX_DURATION}'))",
        f"each end must be a duration of at most {MAX_DURATION}",
    ),
    rule(
        "!self.contains('-') || duration(self.split('-')[0]) <= duration(self.split('-')[1])",
        "the low end of a watch time range must not exceed its high end",
    ),
)
Duration = Annotated[
    str,
    Field(
        max_length=32,
        pattern=DURATION_PATTERN,
        json_schema_extra=validations(_DURATION_BOUND),
    ),
    AfterValidator(_check_duration),
]
WatchTime = Annotated[
    str,
    Field(max_length=65, pattern=WATCH_TIME_PATTERN, json_schema_extra=_WATCH_TIME_RULES),
    AfterValidator(_check_watch_time),
]
Quantity = Annotated[
    str,
    BeforeValidator(_to_str),
    Field(max_length=64, pattern=QUANTITY_PATTERN),
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            **int_or_string(QUANTITY_PATTERN),
            "maxLength": 64,
            "x-kubernetes-validations": [QUANTITY_RANGE],
        }
    ),
]
Port = Annotated[int, Field(ge=1, le=65535)]
# Counts are int32 in Kubernetes (the scale subresource insists on it for replicas).
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
StringMap = Annotated[
    dict[Annotated[str, Field(max_length=253)], Annotated[str, Field(max_length=4096)]],
    Field(max_length=MAX_LIST),
]


class ApiModel(BaseModel):
    """Base of every Dockyard model: camelCase JSON, field docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
        validate_default=False,
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready camelCase dict; unset optional fields are left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def defaulted(model: type[ApiModel]) -> Any:
    """A nested object whose absence means "all defaults" (the apiserver fills it in too)."""
    return Field(default_factory=model, json_schema_extra={"default": {}})
