"""The tenant record: what a billing system or a person asks for.

Resource and network fields are optional: None means "the template's default", which is also what a raw
SQL INSERT that leaves the column NULL gets. `ResolvedSpec` is the spec with every default filled in,
which is what the planner compares against the host.
"""

import ipaddress
import itertools
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema, field_validator

from specs import limits
from specs.names import NAME_PATTERN, validate_name
from specs.quantity import bytes_pattern, cpu_pattern, format_bytes, format_cpu, parse_bytes, parse_cpu
from specs.sleep import Sleep
from specs.status import TenantStatus

_LABEL_KEY_BODY = r"([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_VALUE_BODY = r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?"
LABEL_KEY_PATTERN = f"^{_LABEL_KEY_BODY}$"
LABEL_VALUE_PATTERN = f"^{_LABEL_VALUE_BODY}$"
LABEL_SELECTOR_PATTERN = f"^{_LABEL_KEY_BODY}={_LABEL_VALUE_BODY}$"  # KEY=VALUE, as `?label=` takes it
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)


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
    if isinstance(value, float) and value.is_integer():  # 256.0 is 256 in JSON (and in its schema)
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number of processes")
    return _bounded(limits.PIDS_MIN, limits.PIDS_MAX, str)(value)


# What the API's OpenAPI document says each value accepts: the same rules as the validators above, so a
# client that checks a spec against the schema gets the server's answer (tests/property holds them equal).


def _integer_schema(low: int, high: int, *, multiple_of: int = 1) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    return schema | ({"multipleOf": multiple_of} if multiple_of > 1 else {})


def _size_schema(low: int, high: int, unit: str, multiple_of: int = 1) -> dict[str, Any]:
    text = {"type": "string", "pattern": bytes_pattern(low, high, multiple_of=multiple_of)}
    return {"anyOf": [_integer_schema(low, high, multiple_of=multiple_of), text],
            "description": f"{unit}: a number of bytes, or a size with a binary suffix (Ki, Mi, Gi, Ti), from "
            f"{format_bytes(low)} to {format_bytes(high)}"}


_CPU_TEXT = {"type": "string", "pattern": cpu_pattern(limits.CPU_MILLICORES_MIN, limits.CPU_MILLICORES_MAX)}
_CPU_SCHEMA = {
    "anyOf": [{"type": "number", "minimum": limits.CPU_MILLICORES_MIN / 1000,
               "maximum": limits.CPU_MILLICORES_MAX / 1000, "multipleOf": 0.001}, _CPU_TEXT],
    "description": f"Cores (1, 0.5) or millicores (500m), from {format_cpu(limits.CPU_MILLICORES_MIN)} to "
    f"{format_cpu(limits.CPU_MILLICORES_MAX)}",
}


# Serialized as "500m" in JSON so a round trip never reads millicores back as cores. Each type says in the
# OpenAPI document what it accepts (validation) and what the API answers with (serialization).
Millicores = Annotated[
    int, BeforeValidator(_cpu), PlainSerializer(format_cpu, return_type=str, when_used="json"),
    WithJsonSchema(_CPU_SCHEMA, mode="validation"), WithJsonSchema(_CPU_TEXT, mode="serialization"),
]
MemoryBytes = Annotated[
    int, BeforeValidator(_memory),
    WithJsonSchema(_size_schema(limits.MEMORY_BYTES_MIN, limits.MEMORY_BYTES_MAX, "Memory and swap",
                                limits.MEMORY_PAGE), mode="validation"),
    WithJsonSchema(_integer_schema(limits.MEMORY_BYTES_MIN, limits.MEMORY_BYTES_MAX, multiple_of=limits.MEMORY_PAGE),
                   mode="serialization"),
]
DiskBytes = Annotated[
    int, BeforeValidator(_disk),
    WithJsonSchema(_size_schema(limits.DISK_BYTES_MIN, limits.DISK_BYTES_MAX, "Disk"), mode="validation"),
    WithJsonSchema(_integer_schema(limits.DISK_BYTES_MIN, limits.DISK_BYTES_MAX), mode="serialization"),
]
Pids = Annotated[int, BeforeValidator(_pids), WithJsonSchema(_integer_schema(limits.PIDS_MIN, limits.PIDS_MAX))]
IoBytesPerSecond = Annotated[
    int, BeforeValidator(_io),
    WithJsonSchema(_size_schema(limits.IO_BYTES_PER_SECOND_MIN, limits.IO_BYTES_PER_SECOND_MAX,
                                "Disk bandwidth per second, reads and writes each"), mode="validation"),
    WithJsonSchema(_integer_schema(limits.IO_BYTES_PER_SECOND_MIN, limits.IO_BYTES_PER_SECOND_MAX),
                   mode="serialization"),
]
NAME_SCHEMA: dict[str, Any] = {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 63}
Name = Annotated[str, BeforeValidator(validate_name), WithJsonSchema(NAME_SCHEMA)]
LABELS_SCHEMA: dict[str, Any] = {
    "type": "object", "maxProperties": limits.LABELS_MAX, "propertyNames": {"pattern": LABEL_KEY_PATTERN},
    "additionalProperties": {"type": "string", "pattern": LABEL_VALUE_PATTERN},
}
Labels = Annotated[dict[str, str], WithJsonSchema(LABELS_SCHEMA)]  # checked by Metadata, with its messages


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


INTERNET = "internet"  # an egress rule's `to`: public addresses only (never private, link-local, multicast)

_EGRESS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["to"],
    "properties": {
        "to": {"type": "string", "description": 'An IPv4 CIDR (e.g. "203.0.113.0/24", "198.51.100.7") or '
               '"internet": every public address, never private, link-local, loopback or multicast ranges'},
        "ports": {"type": "array", "minItems": 1, "maxItems": limits.PORTS_MAX,
                  "items": {"type": "integer", "minimum": 1, "maximum": 65535},
                  "description": "TCP and UDP destination ports; absent: every port and protocol"},
    },
}
EGRESS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "enum": ["none", INTERNET]},
        {"type": "array", "maxItems": limits.EGRESS_RULES_MAX, "items": _EGRESS_RULE_SCHEMA},
        {"type": "null"},
    ],
    "description": 'Where the tenant may open connections: "none" (nowhere outside itself), "internet" (public '
    "addresses, through the node's outbound interface), or a list of rules {to, ports}; never the node itself or "
    "another tenant. Null: the template's default",
}

# As the API answers: always the canonical list ("none" is [], "internet" [{"to": "internet", "ports": null}]).
EGRESS_SERIALIZED_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "array", "items": {
    "type": "object", "required": ["to", "ports"], "properties": {
        "to": {"type": "string"},
        "ports": {"anyOf": [{"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535}},
                            {"type": "null"}]}}}}, {"type": "null"}]}


class EgressRule(_Strict):
    """One destination a tenant may reach: `to` an IPv4 network or "internet", on `ports` (TCP and UDP) or,
    when absent, on every port and protocol. Built canonical by `Network` (merged, sorted, no overlaps)."""

    to: str
    ports: tuple[int, ...] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"to": self.to} if self.ports is None else {"to": self.to, "ports": list(self.ports)}


def _egress_network(to: Any, where: str) -> str:
    if not isinstance(to, str) or not to:
        raise ValueError(f'{where}: "to" must be an IPv4 CIDR such as 203.0.113.0/24, or "internet"')
    if to == INTERNET:
        return to
    try:
        network = ipaddress.ip_network(to, strict=True)
    except ValueError as error:
        text = str(error)
        if "host bits set" in text:
            loose = ipaddress.ip_network(to, strict=False)
            raise ValueError(f"{where}: {to} has host bits set; did you mean {loose}?") from None
        rule = f'"to" must be an IPv4 CIDR such as 203.0.113.0/24, or "internet", not {to!r}'
        raise ValueError(f"{where}: {rule}") from None
    if network.version != 4:
        raise ValueError(f"{where}: {to} is IPv6; tenants have IPv4 only")
    return str(network)


def _egress_ports(ports: Any, where: str) -> tuple[int, ...] | None:
    if ports is None:
        return None
    if isinstance(ports, (str, bytes, dict)) or not hasattr(ports, "__iter__"):
        raise ValueError(f"{where}: ports must be a list of port numbers (leave it out for every port)")
    values = [int(p) if isinstance(p, float) and p.is_integer() else p for p in ports]
    if not values:
        raise ValueError(f"{where}: ports must list at least one port (leave it out for every port)")
    if len(values) > limits.PORTS_MAX:
        raise ValueError(f"{where}: must list at most {limits.PORTS_MAX} ports")
    for port in values:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"{where}: ports must be whole numbers from 1 to 65535")
    return tuple(sorted(set(values)))


def egress_rules(value: Any) -> tuple[EgressRule, ...] | None:
    """`spec.network.egress` in canonical form: "none" is (), "internet" one rule to internet; rules to one
    destination are merged (every port wins over a list), sorted (internet first, then by network), and two
    networks may not overlap (nftables could not tell their ports apart). Raises ValueError naming the rule."""
    if value is None:
        return None
    if value == "none":
        return ()
    if value == INTERNET:
        return (EgressRule.model_construct(to=INTERNET, ports=None),)
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError('must be "none", "internet" or a list of rules like {to: 203.0.113.0/24, ports: [443]}')
    items = list(value)
    if len(items) > limits.EGRESS_RULES_MAX:
        raise ValueError(f"must list at most {limits.EGRESS_RULES_MAX} rules")
    merged: dict[str, tuple[int, tuple[int, ...] | None]] = {}  # to -> (first rule number, ports)
    for number, item in enumerate(items, start=1):
        where = f"rule {number}"
        if isinstance(item, EgressRule):
            item = item.as_json()
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping like {{to: 203.0.113.0/24, ports: [443]}}")
        unknown = sorted(str(key) for key in item if key not in ("to", "ports"))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (a rule has to and ports)")
        to = _egress_network(item.get("to"), where)
        ports = _egress_ports(item.get("ports"), where)
        if to in merged:
            first, have = merged[to]
            ports = None if have is None or ports is None else tuple(sorted({*have, *ports}))
            if ports is not None and len(ports) > limits.PORTS_MAX:
                raise ValueError(f"{where}: rules to {to} list more than {limits.PORTS_MAX} ports together")
            merged[to] = (first, ports)
        else:
            merged[to] = (number, ports)
    networks = sorted(
        ((ipaddress.IPv4Network(to), number) for to, (number, _) in merged.items() if to != INTERNET),
        key=lambda pair: (int(pair[0].network_address), pair[0].prefixlen),
    )
    for (one, first), (other, second) in itertools.combinations(networks, 2):
        if one.overlaps(other):
            low, high = sorted((first, second))
            raise ValueError(f"rules {low} and {high} overlap ({one} and {other}); keep one rule per range")
    ordered = ([INTERNET] if INTERNET in merged else []) + [str(network) for network, _ in networks]
    return tuple(EgressRule.model_construct(to=to, ports=merged[to][1]) for to in ordered)


def egress_summary(rules: tuple[EgressRule, ...] | None) -> str:
    """One line for people: "none", "internet", "internet:443 10.0.0.0/8:80,443"."""
    if not rules:
        return "none"
    return " ".join(rule.to + (":" + ",".join(map(str, rule.ports)) if rule.ports else "") for rule in rules)


def egress_display(rules: tuple[EgressRule, ...] | None) -> Any:
    """How a document shows egress: "none", "internet", or the list of rules (None: not set)."""
    if rules is None:
        return None
    if not rules:
        return "none"
    if len(rules) == 1 and rules[0].to == INTERNET and rules[0].ports is None:
        return INTERNET
    return [rule.as_json() for rule in rules]


class Network(_Strict):
    """Ports the tenant accepts connections on (from the gateway and the host only), and where it may open
    connections to (`egress`; the node itself and other tenants never)."""

    ingress: Annotated[
        tuple[int, ...] | None,
        WithJsonSchema({"anyOf": [{"type": "array", "maxItems": limits.PORTS_MAX,
                                   "items": {"type": "integer", "minimum": 1, "maximum": 65535}},
                                  {"type": "null"}]}),
    ] = None

    @field_validator("ingress", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError("must be a list of port numbers")
        # 80.0 is 80 in JSON (and in its schema)
        ports = [int(port) if isinstance(port, float) and port.is_integer() else port for port in value]
        if len(ports) > limits.PORTS_MAX:
            raise ValueError(f"must list at most {limits.PORTS_MAX} ports")
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError("ports must be whole numbers from 1 to 65535")
        return tuple(sorted(set(ports)))

    egress: Annotated[
        tuple[EgressRule, ...] | None,
        WithJsonSchema(EGRESS_SCHEMA, mode="validation"),
        WithJsonSchema(EGRESS_SERIALIZED_SCHEMA, mode="serialization"),
    ] = None

    @field_validator("egress", mode="before")
    @classmethod
    def _egress(cls, value: Any) -> Any:
        return egress_rules(value)

    def filled_from(self, defaults: "Network") -> "Network":
        """Each field unset here taken from `defaults` (a template's)."""
        return Network.model_construct(
            ingress=self.ingress if self.ingress is not None else defaults.ingress,
            egress=self.egress if self.egress is not None else defaults.egress,
        )

    def in_force(self) -> "Network":
        """As a host enforces it: unset egress is none (what the planner compares)."""
        return self if self.egress is not None else Network.model_construct(ingress=self.ingress, egress=())


class TenantSpec(_Strict):
    template: Name
    resources: Resources = Field(default_factory=Resources)
    network: Network = Field(default_factory=Network)
    paused: bool = False
    # None: the template's rule (a plan's rule is written here by the billing webhook).
    sleep: Sleep | None = None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent means "unchanged"; null would reset what cannot be reset


class TenantSpecPatch(_Strict):
    """A JSON merge patch (RFC 7386) of a TenantSpec, as `PATCH /api/v1/tenants/{name}` takes it: a key given
    replaces, null resets it to the template's default. The template can be replaced, never reset. The API
    validates the merged spec as a TenantSpec, so this model is the patch's schema."""

    template: Annotated[str | None, WithJsonSchema(NAME_SCHEMA)] = Field(default=None, json_schema_extra=_no_default)
    resources: Resources | None = None
    network: Network | None = None
    paused: bool | None = None
    sleep: Sleep | None = None


class Metadata(_Strict):
    name: Name
    labels: Labels = Field(default_factory=dict)
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

    api_version: str = Field(default="fleet/v1", alias="apiVersion", json_schema_extra={"enum": ["fleet/v1"]})
    kind: str = Field(default="Tenant", json_schema_extra={"enum": ["Tenant"]})
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
