"""What operators and their tools read: `/metrics` (Prometheus' text format) and a tenant's usage now.

Usage is read from the host at each request by the driver of the node that runs in this process
(`fleet up`, or an agent's `--metrics-listen`); a process that cannot read the tenant's host (`fleet api`
alone, or another node's) answers 404 saying where to ask, rather than guess. Routes
never touch the host or the SQL themselves: the driver and the store do.
"""

from fastapi import APIRouter, FastAPI, Response
from pydantic import Field

from reconciler.metrics import CONTENT_TYPE
from reconciler.web import errors
from reconciler.web.auth import Reader
from reconciler.web.context import ContextDep, WebContext
from reconciler.web.errors import ApiError
from reconciler.web.tenants import ERRORS, TenantName
from specs import Usage

metrics_router = APIRouter(responses=ERRORS)


class TenantUsage(Usage):
    """What a tenant uses now, read from its node's host at this request."""

    node: str = Field(description="The node that read it")


@metrics_router.get(
    "/metrics", tags=["observability"], summary="Prometheus metrics",
    response_class=Response,
    description="Prometheus' text format: reconcile, queue, action, scheduler and webhook counters, tenants by "
    "phase and node, nodes' capacity and allocation, KSM savings, and (under `fleet up`) every tenant's usage. "
    "The list is in docs/operations.md, Metrics.",
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                     "description": "The text exposition format (version 0.0.4); see docs/operations.md, Metrics"}},
)
def metrics(context: ContextDep, _token: Reader) -> Response:
    assert context.metrics is not None  # WebContext makes one when none is given
    return Response(context.metrics.exposition(), media_type=CONTENT_TYPE)


router = APIRouter(responses=ERRORS)
router.include_router(metrics_router)


@router.get("/api/v1/tenants/{name}/usage", response_model=TenantUsage, tags=["tenants"],
            summary="What a tenant uses now: CPU seconds, memory, disk, network",
            description="Read from the host of the tenant's node at this request (never stored). 404 (the message "
            "says which): no such tenant; it has no container on the node yet; or this process cannot read its "
            "host (`fleet api` runs no driver; on a fleet ask its node's `fleet agent --metrics-listen`).")
def tenant_usage(name: TenantName, context: ContextDep, _token: Reader) -> TenantUsage:
    tenant = context.store.get_tenant(name)
    if tenant is None:
        raise ApiError(404, "name", f"tenant {name} does not exist")
    local = context.usage
    if local is None:
        raise ApiError(404, "usage", "this API process runs no driver, so it reads no host: ask the API of "
                       "`fleet up`, or the tenant's node (fleet agent --metrics-listen)")
    node = tenant.status.node if tenant.status else None
    if node is not None and node != local.node:
        raise ApiError(404, "usage", f"tenant {name} runs on node {node}; this process reads node {local.node} only "
                       "(ask that node's fleet agent --metrics-listen)")
    found = local.read([name])
    if not found:
        phase = tenant.status.phase.value if tenant.status else "Pending"
        raise ApiError(404, "name", f"tenant {name} has no container on node {local.node} yet (phase {phase})")
    return TenantUsage(node=local.node, **found[0].model_dump())


def create_node_app(context: WebContext) -> FastAPI:
    """What an agent of a fleet serves (`fleet agent --metrics-listen`): its own `/metrics` (its reconciles,
    queue, actions and its tenants' usage) and its tenants' usage route; nothing else of the API."""
    return _small_app(context, "Fleet node metrics", router)


def create_metrics_app(context: WebContext) -> FastAPI:
    """What `fleet scheduler --metrics-listen` serves: its own `/metrics` (bindings and their failures,
    pending tenants, finished deletes of unbound tenants, nodes marked NotReady, whether it leads) and
    nothing else: a scheduler reads no host."""
    return _small_app(context, "Fleet scheduler metrics", metrics_router)


def _small_app(context: WebContext, title: str, routes: APIRouter) -> FastAPI:
    """An app of `routes` alone, with the API's error answers and no OpenAPI document."""
    app = FastAPI(title=title, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.context = context
    app.state.closing = False
    errors.install(app)
    app.include_router(routes)
    return app
