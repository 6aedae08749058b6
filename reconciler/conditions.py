"""From what the host shows and what the last pass did, the status a user reads."""

from datetime import datetime

from reconciler.actions import Action, ApplyNetwork, ApplyResources, Clone, Delete, Start
from specs import (
    Condition,
    ConditionStatus,
    FleetError,
    Observed,
    PermanentError,
    Phase,
    ResolvedSpec,
    TenantStatus,
    format_duration,
)

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE


def _failed(failed: Action | None, kind: type, error: FleetError | None) -> tuple[str, str] | None:
    if error is not None and isinstance(failed, kind):
        return (error.reason if error.reason not in ("Error",) else "Failed", str(error))
    return None


def _condition(
    previous: TenantStatus | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> Condition:
    before = previous.condition(type_) if previous else None
    changed = before is None or before.status != status
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if changed or before is None else before.last_transition_time,
        observed_generation=generation,
    )


def derive_status(
    *,
    previous: TenantStatus | None,
    spec: ResolvedSpec,
    node: str,
    observed: Observed | None,
    error: FleetError | None,
    failed: Action | None,
    url: str,
    now: datetime,
) -> TenantStatus:
    gen = spec.generation

    def cond(type_: str, ok: bool, good: tuple[str, str], bad: tuple[str, str], kind: type | None = None) -> Condition:
        failure = _failed(failed, kind, error) if kind else None
        reason, message = good if ok else (failure or bad)
        return _condition(previous, type_, T if ok else F, reason, message, now, gen)

    provisioned = observed is not None
    resources_ok = observed is not None and observed.resources == spec.resources
    network_ok = (observed is not None and observed.address is not None
                  and observed.network.in_force() == spec.network.in_force())
    running = observed is not None and observed.running
    conditions = [
        _condition(previous, "Scheduled", T, "Bound", f"bound to node {node}", now, gen),
        cond(
            "Provisioned",
            provisioned,
            ("Cloned", f"cloned from {spec.template.ref}"),
            ("NotCloned", "no container yet"),
            Clone,
        ),
        cond(
            "ResourcesApplied",
            resources_ok,
            ("Applied", "limits on the host match the spec"),
            ("Pending", "limits not yet applied"),
            ApplyResources,
        ),
        cond(
            "NetworkReady",
            network_ok,
            ("Configured", f"address {observed.address if observed else ''}"),
            ("Pending", "network not yet configured"),
            ApplyNetwork,
        ),
    ]
    ready = all(c.status == T for c in conditions) and running
    # Asleep and stopped with all else in place: what a sleeping tenant should be (a wake is one start).
    sleeping = spec.asleep and not running and all(c.status == T for c in conditions) and not spec.deleting
    since = spec.asleep_since.isoformat(timespec="seconds") if spec.asleep_since else ""
    if spec.asleep or spec.sleep_after is not None:
        conditions.append(_condition(
            previous, "Sleeping", T if sleeping else F,
            *(("Idle", f"asleep since {since}; the next request through the gateway wakes it") if sleeping else
              ("FallingAsleep", f"asleep since {since}; stopping the container") if spec.asleep else
              ("Awake", f"sleeps after {format_duration(spec.sleep_after)} without a visitor")),
            now, gen))
    if ready:
        ready_condition = _condition(previous, "Ready", T, "Running", "the container is running", now, gen)
    elif sleeping:
        ready_condition = _condition(previous, "Ready", F, "Sleeping", f"asleep since {since}", now, gen)
    elif spec.paused:
        ready_condition = _condition(previous, "Ready", F, "Paused", "paused: the reconciler only observes", now, gen)
    else:
        first_bad = next((c for c in conditions if c.status != T), None)
        start_failure = _failed(failed, Start, error)
        reason, message = start_failure or (
            (first_bad.reason, first_bad.message) if first_bad else ("NotRunning", "the container is not running")
        )
        ready_condition = _condition(previous, "Ready", F, reason, message, now, gen)
    conditions.append(ready_condition)
    if spec.deleting:
        # Why a delete has not finished yet, for the operator at 3 a.m.: it is retried until it does.
        conditions.append(
            cond("Deleted", False, ("", ""), ("InProgress", "deleting everything the tenant had"), Delete)
        )

    if spec.deleting:
        phase = Phase.DELETING
    elif spec.paused:
        phase = Phase.PAUSED
    elif isinstance(error, PermanentError):
        phase = Phase.FAILED
    elif sleeping:
        phase = Phase.SLEEPING
    elif ready:
        phase = Phase.RUNNING
    else:
        phase = Phase.PROVISIONING
    return TenantStatus(
        phase=phase,
        observed_generation=gen,
        node=node,
        url=url,
        address=observed.address if observed else None,
        template=observed.template if observed else None,
        conditions=tuple(conditions),
        last_error=str(error) if error else None,
        updated_at=now,
    )


def same_status(a: TenantStatus | None, b: TenantStatus) -> bool:
    """Equal but for timestamps: no write, no revision, when nothing a user could see changed."""
    if a is None:
        return False
    strip = {"updated_at": None}
    return a.model_copy(update=strip) == b.model_copy(update=strip)


def describe_drift(spec: ResolvedSpec, observed: Observed | None) -> str:
    if observed is None:
        return "the container is gone from the host"
    found = []
    if observed.resources != spec.resources:
        have, want = observed.resources.display(), spec.resources.display()
        diffs = [
            f"{k} {have[k] or 'unlimited'} (want {want[k] or 'unlimited'})"
            for k in ("cpu", "memory", "disk", "pids", "io")
            if getattr(observed.resources, k) != getattr(spec.resources, k)
        ]
        found.append("limits changed: " + ", ".join(diffs))
    if observed.network.in_force() != spec.network.in_force() or observed.address is None:
        found.append("network or firewall rules missing or changed")
    if not observed.running and not spec.asleep:
        found.append("the container is not running")
    return "; ".join(found) or "nothing"


def failed_status(
    *, generation: int, node: str | None, url: str, reason: str, message: str, now: datetime
) -> TenantStatus:
    """A failure before any action ran that retrying alone will not fix (e.g. its template is gone)."""
    ready = Condition(type="Ready", status=F, reason=reason, message=message, last_transition_time=now)
    return TenantStatus(
        phase=Phase.FAILED, observed_generation=generation, node=node, url=url, conditions=(ready,),
        last_error=message, updated_at=now,
    )


def unschedulable_status(why: str, now: datetime) -> TenantStatus:
    """No node can take the tenant now; `why` names each node's reason."""
    scheduled = Condition(type="Scheduled", status=F, reason="Unschedulable", message=why, last_transition_time=now)
    return TenantStatus(phase=Phase.PENDING, conditions=(scheduled,), last_error=why, updated_at=now)


def node_lost_status(status: TenantStatus, message: str, now: datetime) -> TenantStatus:
    """The tenant's node stopped heartbeating: Ready turns Unknown, everything else is kept."""
    ready = Condition(
        type="Ready", status=ConditionStatus.UNKNOWN, reason="NodeNotReady", message=message, last_transition_time=now
    )
    conditions = (*(c for c in status.conditions if c.type != "Ready"), ready)
    return status.model_copy(update={"conditions": conditions, "updated_at": now})
