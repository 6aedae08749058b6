"""What the reconciler reports back: phase, conditions and events.

Enough to answer "why is my tenant not running" without reading logs.
"""

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Phase(StrEnum):
    PENDING = "Pending"  # recorded, not yet bound to a node
    SCHEDULED = "Scheduled"  # bound to a node, nothing done yet
    PROVISIONING = "Provisioning"  # actions under way or being retried
    RUNNING = "Running"
    FAILED = "Failed"  # a permanent error; a spec change retries
    DELETING = "Deleting"
    PAUSED = "Paused"  # the reconciler observes only
    SLEEPING = "Sleeping"  # stopped while idle (filesystem, address, limits, firewall kept); a visitor wakes it


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


CONDITION_TYPES = ("Scheduled", "Provisioned", "ResourcesApplied", "NetworkReady", "Ready")


class Condition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: datetime
    observed_generation: int = 0


class TenantStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: Phase = Phase.PENDING
    observed_generation: int = 0
    node: str | None = None
    url: str | None = None
    address: str | None = None
    template: str | None = None  # name@version the tenant was cloned from
    conditions: tuple[Condition, ...] = ()
    last_error: str | None = None
    updated_at: datetime | None = None

    def condition(self, type_: str) -> Condition | None:
        for condition in self.conditions:
            if condition.type == type_:
                return condition
        return None


class Event(BaseModel):
    """One thing the reconciler did or saw, appended and never changed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = 0
    tenant: str
    node: str | None = None
    type: str = "Normal"  # Normal or Warning
    reason: str
    action: str | None = None
    message: str = ""
    duration_ms: float | None = None
    generation: int | None = None
    created_at: datetime | None = None
    details: dict[str, list[str]] = Field(default_factory=dict)
