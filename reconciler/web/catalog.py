"""Read-mostly routes around tenants: templates, plans (operators write them), nodes and the event log."""

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from reconciler.web.auth import Operator, Reader
from reconciler.web.context import AccessDep, ContextDep, StoreDep
from reconciler.web.errors import ApiError
from reconciler.web.tenants import ERRORS
from specs import Event, NodeCapacity, Template
from specs.plan import PLAN_ID_PATTERN, Plan

router = APIRouter(prefix="/api/v1", responses=ERRORS)
PlanId = Annotated[str, Path(pattern=PLAN_ID_PATTERN, max_length=128, description="Billing price or product id")]


class Node(BaseModel):
    name: str
    driver: str
    tenants: int
    capacity: NodeCapacity | None = None


@router.get("/templates", response_model=list[Template], tags=["templates"], summary="Templates tenants clone")
def list_templates(store: StoreDep, _token: Reader) -> list[Template]:
    return store.list_templates()


@router.get("/plans", response_model=list[Plan], tags=["plans"], summary="Billing plans")
def list_plans(access: AccessDep, _token: Reader) -> list[Plan]:
    return access.list_plans()


@router.get("/plans/{plan_id}", response_model=Plan, tags=["plans"], summary="One billing plan")
def get_plan(plan_id: PlanId, access: AccessDep, _token: Reader) -> Plan:
    plan = access.get_plan(plan_id)
    if plan is None:
        raise ApiError(404, "id", f"plan {plan_id} not found")
    return plan


@router.put("/plans/{plan_id}", response_model=Plan, tags=["plans"], summary="Create or replace a plan")
def put_plan(plan_id: PlanId, plan: Plan, access: AccessDep, _token: Operator) -> Plan:
    if plan.id != plan_id:
        raise ApiError(422, "id", f"must match the path ({plan_id})")
    access.apply_plans([plan])
    return plan


@router.delete("/plans/{plan_id}", status_code=204, tags=["plans"], summary="Delete a plan")
def delete_plan(plan_id: PlanId, access: AccessDep, _token: Operator) -> None:
    access.delete_plan(plan_id)


@router.get("/nodes", response_model=list[Node], tags=["nodes"], summary="Nodes and what runs on them")
def list_nodes(context: ContextDep, _token: Reader) -> list[Node]:
    counts: dict[str, int] = {}
    for record in context.store.iter_desired():
        if record.node is not None:
            counts[record.node] = counts.get(record.node, 0) + 1
    known = {view.name: view for view in context.nodes()}
    return [
        Node(name=name, driver=known[name].driver if name in known else "unknown", tenants=counts.get(name, 0),
             capacity=known[name].capacity if name in known else None)
        for name in sorted(set(counts) | set(known))
    ]


@router.get("/events", response_model=list[Event], tags=["events"], summary="The event log, oldest first")
def list_events(
    store: StoreDep, _token: Reader,
    tenant: Annotated[str | None, Query(max_length=63)] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Event]:
    return store.events(tenant=tenant, after_id=after, limit=limit)
