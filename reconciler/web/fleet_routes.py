"""Read-mostly routes around tenants: templates, plans (operators write them), nodes and the event log."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, Field

from reconciler.web.auth import Operator, Reader
from reconciler.web.context import AccessDep, ContextDep, NodeView, StoreDep, WebContext
from reconciler.web.errors import ApiError
from reconciler.web.openapi import link
from reconciler.web.tenants import ERRORS
from specs import Event, NodeCapacity, Template
from specs.billing_plan import PLAN_ID_PATTERN, Plan
from state.nodes import NodeRecord, NodeStore, Usage

router = APIRouter(prefix="/api/v1", responses=ERRORS)
PAGE_BYTES = 4096  # KSM counts pages
PlanId = Annotated[str, Path(pattern=PLAN_ID_PATTERN, max_length=128, description="Billing price or product id")]


class NodeResources(BaseModel):
    cpu_millicores: int
    memory_bytes: int
    disk_bytes: int
    tenants: int


class Node(BaseModel):
    """A node as `fleet nodes` shows it: registered by `fleet agent`, or the node of a single `fleet up`."""

    name: str
    driver: str
    registered: bool = Field(description="False for the node of a single `fleet up`, which runs in the API's process")
    ready: bool
    cordoned: bool
    not_ready_reason: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    templates: list[str] = Field(default_factory=list, description="name@version of every template it holds")
    tenants: int = Field(description="Tenants bound to it")
    capacity: NodeCapacity | None = None
    allocatable: NodeResources | None = Field(default=None, description="What the scheduler may hand out")
    used: NodeResources = Field(description="What the tenants bound to it ask for")
    ksm_saved_bytes: int = Field(default=0, description="Memory kernel same-page merging saves")
    heartbeat_age_seconds: float | None = Field(default=None, description="On the store's clock; null when local")


def _registered(record: NodeRecord) -> Node:
    used, allocatable = record.used, record.allocatable
    return Node(
        name=record.name, driver=record.driver, registered=True, ready=record.ready, cordoned=record.cordoned,
        not_ready_reason=record.not_ready_reason, labels=record.labels, templates=list(record.templates),
        tenants=used.tenants, capacity=record.capacity,
        allocatable=NodeResources(cpu_millicores=allocatable.cpu_millicores, memory_bytes=allocatable.memory_bytes,
                                  disk_bytes=allocatable.disk_bytes, tenants=allocatable.tenants),
        used=NodeResources(cpu_millicores=used.cpu_millicores, memory_bytes=used.memory_bytes,
                           disk_bytes=used.disk_bytes, tenants=used.tenants),
        ksm_saved_bytes=record.capacity.ksm_pages_sharing * PAGE_BYTES,
        heartbeat_age_seconds=round(record.heartbeat_age, 1),
    )


def _local(view: NodeView, used: Usage) -> Node:
    capacity = view.capacity
    return Node(
        name=view.name, driver=view.driver, registered=False, ready=True, cordoned=False, tenants=used.tenants,
        capacity=capacity,
        used=NodeResources(cpu_millicores=used.cpu_millicores, memory_bytes=used.memory_bytes,
                           disk_bytes=used.disk_bytes, tenants=used.tenants),
        ksm_saved_bytes=0 if capacity is None else capacity.ksm_pages_sharing * PAGE_BYTES,
    )


def nodes_of(context: WebContext, usage: dict[str, Usage] | None = None) -> list[Node]:
    """Registered nodes, then the local node of `fleet up` if it is not one of them, by name. `usage`: what
    the tenants bound to each node ask for, when the caller has read it already (the dashboard has)."""
    store = NodeStore(context.store)
    registered = {record.name: _registered(record) for record in store.list_nodes()}
    if usage is None:
        usage = store.usage()
    local = {view.name: _local(view, usage.get(view.name, Usage())) for view in context.nodes()
             if view.name not in registered}
    return [node for _, node in sorted({**local, **registered}.items())]


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


PLAN_EXAMPLES: dict[str, Any] = {"basic": {"summary": "A billing price and the quota it buys", "value": {
    "kind": "Plan", "id": "price_basic", "template": "base", "description": "Basic",
    "resources": {"cpu": "1", "memory": "1Gi", "disk": "10Gi"}}}}
_PLAN = "/api/v1/plans/{plan_id}"
PLAN_LINKS = {
    "GetPlan": link(_PLAN, "get", "Read the plan written", plan_id="$response.body#/id"),
    "DeletePlan": link(_PLAN, "delete", "Delete it", plan_id="$response.body#/id"),
}


@router.put("/plans/{plan_id}", response_model=Plan, tags=["plans"], summary="Create or replace a plan",
            responses={200: {"links": PLAN_LINKS}})
def put_plan(
    plan_id: PlanId, plan: Annotated[Plan, Body(openapi_examples=PLAN_EXAMPLES)], access: AccessDep, _token: Operator
) -> Plan:
    if plan.id != plan_id:  # valid in itself, but not a representation of this resource (RFC 9110 9.3.4)
        raise ApiError(409, "id", f"must match the path ({plan_id})")
    access.apply_plans([plan])
    return plan


@router.delete("/plans/{plan_id}", status_code=204, tags=["plans"], summary="Delete a plan")
def delete_plan(plan_id: PlanId, access: AccessDep, _token: Operator) -> None:
    access.delete_plan(plan_id)


@router.get("/nodes", response_model=list[Node], tags=["nodes"], summary="Nodes and what runs on them")
def list_nodes(context: ContextDep, _token: Reader) -> list[Node]:
    return nodes_of(context)


@router.get("/events", response_model=list[Event], tags=["events"], summary="The event log, oldest first")
def list_events(
    store: StoreDep, _token: Reader,
    tenant: Annotated[str | None, Query(max_length=63)] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Event]:
    return store.events(tenant=tenant, after_id=after, limit=limit)
