"""`fleet apply`: tenants written all together or not at all, and what each write did (with `--dry-run`,
would do: the plan and the node it would land on). One path for the CLI on the store and for the API's
`POST /api/v1/apply`, which `fleet --server` calls; `Applied` is all either prints.

`Applied` is plain data and this module imports the store and the planner only inside `apply_tenants`:
`fleet --server apply` builds `Applied` from the server's answer without loading either."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.scheduler import Strategy
    from specs import Tenant
    from state import ApplyResult, Store


@dataclass(frozen=True)
class Applied:
    name: str
    outcome: str  # created, configured or unchanged
    generation: int
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)  # dry runs: the reconciler's actions, in order
    node: str | None = None  # dry runs: where the tenant would land
    unschedulable: str | None = None  # dry runs: why no node would take it

    def lines(self) -> list[str]:
        """What the CLI prints for it."""
        suffix = " (dry run)" if self.dry_run else ""
        lines = [f"tenant/{self.name} {self.outcome}{suffix}, generation {self.generation}"]
        if self.dry_run:
            lines.append(f"  would land on: {self.node or 'no node: ' + (self.unschedulable or '')}")
            lines += [f"  plan: {step}" for step in self.plan] or ["  plan: nothing to do"]
        return lines


def planned(result: ApplyResult) -> list[str]:
    """The reconciler's actions for what a write stored (or would store), from what it last saw of the tenant
    as the write's own transaction read it back: no further round trip to the store."""
    from reconciler.plan import plan

    desired = result.desired
    if desired is None or desired.spec is None:
        return []
    return [action.describe() for action in plan(desired.spec, result.observed)]


def apply_tenants(
    store: Store, tenants: list[Tenant], *, dry_run: bool, strategy: Strategy | None = None,
    local: str | None = None,
) -> list[Applied]:
    """Write `tenants` in one transaction (all or none); a dry run writes nothing and says what would happen.
    `strategy` and `local` are the scheduler's placement settings for the dry run's preview."""
    labels = {tenant.metadata.name: tenant.metadata.labels for tenant in tenants}
    applied = []
    for result in store.apply_tenants(tenants, dry_run=dry_run):
        desired = result.desired
        if not dry_run or desired is None or desired.spec is None:
            applied.append(Applied(result.name, result.outcome.value, result.generation, dry_run))
            continue
        from reconciler.placement_preview import would_place  # the scheduler's code: only for dry runs

        placement = (would_place(store, desired, labels.get(result.name, {}), strategy, local) if strategy
                     else would_place(store, desired, labels.get(result.name, {}), local_node=local))
        applied.append(Applied(result.name, result.outcome.value, result.generation, True, planned(result),
                               placement.node, placement.unschedulable))
    return applied
