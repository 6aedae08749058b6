"""Fleet's declarative model: what a tenant should be, what a node saw, what happened.

Pure data and validation. This package imports nothing else of the project and does no I/O, so every
other layer (state, drivers, reconciler) can share these types.
"""

from specs.errors import FleetError, NotFound, PermanentError, TransientError
from specs.host_check import CheckStatus, HostCheck
from specs.names import validate_name
from specs.observed import DeleteReceipt, DriverInfo, NodeCapacity, Observed
from specs.quantity import format_bytes, format_cpu, parse_bytes, parse_cpu
from specs.resolved import ResolvedSpec
from specs.sleep import Sleep, format_duration, parse_duration
from specs.status import Condition, ConditionStatus, Event, Phase, TenantStatus
from specs.template import Template
from specs.template_source import TemplateSource
from specs.tenant import (
    Metadata,
    Network,
    Resources,
    Tenant,
    TenantSpec,
)
from specs.usage import Usage

__all__ = [
    "CheckStatus",
    "Condition",
    "ConditionStatus",
    "DeleteReceipt",
    "DriverInfo",
    "Event",
    "FleetError",
    "HostCheck",
    "Metadata",
    "Network",
    "NodeCapacity",
    "NotFound",
    "Observed",
    "PermanentError",
    "Phase",
    "ResolvedSpec",
    "Resources",
    "Sleep",
    "Template",
    "TemplateSource",
    "Tenant",
    "TenantSpec",
    "TenantStatus",
    "TransientError",
    "Usage",
    "format_bytes",
    "format_cpu",
    "format_duration",
    "parse_bytes",
    "parse_cpu",
    "parse_duration",
    "validate_name",
]
