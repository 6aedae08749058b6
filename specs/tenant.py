"""The tenant record: what a billing system or a person asks for.

Resource and network fields are optional: None means "the template's default", which is also what a raw
SQL INSERT that leaves the column NULL gets. `ResolvedSpec` is the spec with every default filled in,
which is what the planner compares against the host.
"""

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator

from specs import limits
from specs.names import validate_name
from specs.quantity import format_bytes, format_cpu, parse_bytes, parse_cpu
from specs.status import TenantStatus

_LABEL_KEY = re.compile(r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


def _bounded(low: int, high: int, shown: Any) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {shown(low)} and {shown(high)}")
        return value

    return check


def _cpu(value: Any) -> int:
    return _bounded(limits.CPU_MILLICORES_MIN, limits.CPU_MILLICORES_MAX, format_cpu)(parse_cpu(value))


def _memory(value: Any) -> int:
    size = _bounded(limits.MEMORY_BYTES_MIN, limits.MEMORY_BYTES_MAX, format_bytes)(parse_bytes(value))
    if size % limits.MEMORY_PAGE:
        raise ValueError("must be a whole number of 4Ki pages, e.g. 256Mi or 1536Mi")
    return size


def _disk(value: Any) -> int:
    return _bounded(limits.DISK_BYTES_MIN, limits.DISK_BYTES_MAX, format_bytes)(parse_bytes(value))


def _io(value: Any) -> int:
    return _bounded(limits.IO_BYTES_PER_SECOND_MIN, limits.IO_BYTES_PER_SECOND_MAX, format_bytes)(parse_bytes(value))


def _pids(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number of processes")
    return _bounded(limits.PIDS_MIN, limits.PIDS_MAX, str)(value)


# Serialized as "500m" in JSON so a round trip never reads millicores back as cores.
Millicores = Annotated[int, BeforeValidator(_cpu), PlainSerializer(format_cpu, return_type=str, when_used="json")]
MemoryBytes = Annotated[int, BeforeValidator(_memory)]
DiskBytes = Annotated[int, BeforeValidator(_disk)]
Pids = Annotated[int, BeforeValidator(_pids)]
IoBytesPerSecond = Annotated[int, BeforeValidator(_io)]
Name = Annotated[str, BeforeValidator(validate_name)]


class _Strict(BaseModel):
    # Unknown keys are refused, not ignored: a typo in a spec must not silently do nothing.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """Quota of one tenant, in base units (millicores, bytes, processes, bytes per second).

    `io` is the disk bandwidth the tenant may use for reads and, separately, for writes (e.g. "50Mi" is
    50 MiB/s each way); `memory` bounds memory and swap together."""

    cpu: Millicores | None = None
    memory: MemoryBytes | None = None
    disk: DiskBytes | None = None
    pids: Pids | None = None
    io: IoBytesPerSecond | None = None

    def filled_from(self, defaults: "Resources") -> "Resources":
        return Resources.model_construct(
            cpu=self.cpu if self.cpu is not None else defaults.cpu,
            memory=self.memory if self.memory is not None else defaults.memory,
            disk=self.disk if self.disk is not None else defaults.disk,
            pids=self.pids if self.pids is not None else defaults.pids,
            io=self.io if self.io is not None else defaults.io,
        )

    def display(self) -> dict[str, str | int | None]:
        return {
            "cpu": format_cpu(self.cpu) if self.cpu is not None else None,
            "memory": format_bytes(self.memory) if self.memory is not None else None,
            "disk": format_bytes(self.disk) if self.disk is not None else None,
            "pids": self.pids,
            "io": format_bytes(self.io) if self.io is not None else None,  # per second; round-trips through apply
        }


class Network(_Strict):
    """Ports the tenant accepts connections on, from the gateway and the host only."""

    ingress: tuple[int, ...] | None = None

    @field_validator("ingress", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError("must be a list of port numbers")
        ports = list(value)
        if len(ports) > limits.PORTS_MAX:
            raise ValueError(f"must list at most {limits.PORTS_MAX} ports")
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError("ports must be whole numbers from 1 to 65535")
        return tuple(sorted(set(ports)))


class TenantSpec(_Strict):
    template: Name
    resources: Resources = Field(default_factory=Resources)
    network: Network = Field(default_factory=Network)
    paused: bool = False


class Metadata(_Strict):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    # Set by the store, never by the writer:
    generation: int = 0
    revision: int = 0
    created_at: datetime | None = None
    deletion_requested_at: datetime | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > limits.LABELS_MAX:
            raise ValueError(f"must have at most {limits.LABELS_MAX} labels")
        for key, item in value.items():
            if not _LABEL_KEY.fullmatch(key):
                raise ValueError(f"label key {key!r} must be [prefix/]name of letters, digits, '-', '_', '.'")
            if not isinstance(item, str) or not _LABEL_VALUE.fullmatch(item):
                raise ValueError(f"label {key!r} value must be at most 63 letters, digits, '-', '_', '.'")
        return value


class Tenant(_Strict):
    """A tenant document as `fleet apply` reads it and `fleet get -o yaml` writes it."""

    api_version: str = Field(default="fleet/v1", alias="apiVersion")
    kind: str = "Tenant"
    metadata: Metadata
    spec: TenantSpec
    status: TenantStatus | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != "Tenant":
            raise ValueError("must be 'Tenant'")
        return value

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != "fleet/v1":
            raise ValueError("must be 'fleet/v1'")
        return value

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def deleting(self) -> bool:
        return self.metadata.deletion_requested_at is not None


class ResolvedSpec(_Strict):
    """Desired state with every default filled in: what the planner compares with the host."""

    name: Name
    generation: int
    template: Name
    template_version: str
    resources: Resources
    network: Network
    paused: bool = False
    deleting: bool = False
