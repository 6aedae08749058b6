"""Tenant routes: create, get, list (filters, paging), patch the spec, delete, events, and authorize
(mint a claim and the URL to send the customer to).

Writes take `?dry_run=true` (the same checks, nothing written, the plan returned; a create also names
the node it would land on) and an `Idempotency-Key`. Routes validate with the spec models and call the
store; they never write SQL and never touch the host.
"""

from datetime import datetime
from typing import Annotated, Any

from anyio import from_thread
from fastapi import APIRouter, Body, Header, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, ValidationError

from reconciler import waking
from reconciler.actions import Delete, Stop
from reconciler.applying import planned
from reconciler.placement_preview import would_place
from reconciler.plan import plan as plan_actions
from reconciler.web.auth import Reader, TenantWriter
from reconciler.web.claims import DEFAULT_TTL_SECONDS
from reconciler.web.context import ContextDep, StoreDep, WebContext
from reconciler.web.errors import ApiError, ErrorBody, validation_error
from reconciler.web.idempotency import IdempotencyDep
from reconciler.web.openapi import link
from specs import Event, NotFound, Phase, Tenant
from specs.names import NAME_PATTERN
from specs.tenant import LABEL_SELECTOR_PATTERN, Labels, TenantSpecPatch
from state import AlreadyExists, ApplyResult, Store
from state.errors import StaleWrite
from state.records import Precondition

CLAIM_PARAMETER = "fleet_claim"
TenantName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="The tenant's name")]
DryRun = Annotated[bool, Query(description="Check and plan only; write nothing")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422, 503)
}

router = APIRouter(prefix="/api/v1", tags=["tenants"], responses=ERRORS)


class WriteResult(BaseModel):
    """What a write did (or, with dry_run, would do)."""

    name: str
    outcome: str = Field(description="created, configured, unchanged or deleting")
    generation: int
    dry_run: bool = False
    plan: list[str] = Field(default_factory=list, description="The actions the reconciler will take")
    tenant: Tenant | None = None
    node: str | None = Field(default=None, description="Creates with dry_run: the node it would land on")
    unschedulable: str | None = Field(default=None, description="Creates with dry_run: why no node would take it")


class TenantList(BaseModel):
    items: list[Tenant]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last page")


def _object(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise ValueError("must be an object")
    return value


class TenantPatch(BaseModel):
    """A JSON merge patch (RFC 7386) of a tenant: keys given replace, null resets to the template default."""

    model_config = ConfigDict(extra="forbid")

    labels: Labels | None = None
    # Kept as the client sent it (merged into the current spec, then validated as a TenantSpec); its schema
    # is the patch's, so a client can check a patch before sending it.
    spec: Annotated[
        dict[str, Any] | None, PlainValidator(_object, json_schema_input_type=TenantSpecPatch | None)
    ] = None


class AuthorizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_seconds: int = Field(default=DEFAULT_TTL_SECONDS, ge=60, le=86400, description="How long the claim lasts")


class Authorization(BaseModel):
    tenant: str
    claim: str = Field(description="A signed JWT; its audience is the tenant")
    url: str = Field(description="Redirect the customer here: the tenant URL with the claim")
    expires_at: datetime


def _delete_plan(store: Store, name: str) -> list[str]:
    """What the reconciler will do for a delete, from plan() on the record marked deleting."""
    desired, observed = store.desired(name), store.last_observed(name)
    if desired is None or desired.spec is None:  # no spec to plan from (its template is gone): the same steps
        steps: list[Stop | Delete] = [] if observed is None else [*([Stop()] if observed.running else []), Delete()]
        return [action.describe() for action in steps]
    deleting = desired.spec.model_copy(update={"deleting": True})
    return [action.describe() for action in plan_actions(deleting, observed)]


def _result(result: ApplyResult, dry_run: bool) -> WriteResult:
    """From what the write's own transaction read back: no further round trip to the store."""
    return WriteResult(
        name=result.name, outcome=result.outcome.value, generation=result.generation, dry_run=dry_run,
        plan=planned(result), tenant=None if dry_run else result.tenant,
    )


def _existing(store: Store, name: str) -> Tenant:
    tenant = store.get_tenant(name)
    if tenant is None:
        raise NotFound(f"metadata.name: tenant {name} not found")
    return tenant


TENANT_EXAMPLES: dict[str, Any] = {  # "base" is the template every store starts with
    "minimal": {"summary": "The template's defaults",
                "value": {"kind": "Tenant", "metadata": {"name": "acme"}, "spec": {"template": "base"}}},
    "quota": {"summary": "A quota, ports and labels", "value": {
        "apiVersion": "fleet/v1", "kind": "Tenant",
        "metadata": {"name": "globex", "labels": {"tier": "gold", "billing/customer": "cus_Globex1"}},
        "spec": {"template": "base", "resources": {"cpu": "500m", "memory": "512Mi", "disk": "2Gi", "pids": 512,
                                                   "io": "50Mi"}, "network": {"ingress": [80, 443]}}}},
}
_TENANT = "/api/v1/tenants/{name}"
_CREATED = "$response.body#/name"
TENANT_LINKS = {
    "GetTenant": link(_TENANT, "get", "Read the tenant created", name=_CREATED),
    "PatchTenant": link(_TENANT, "patch", "Change it", name=_CREATED),
    "DeleteTenant": link(_TENANT, "delete", "Delete it", name=_CREATED),
    "AuthorizeTenant": link(f"{_TENANT}/authorize", "post", "Let a customer in", name=_CREATED),
    "TenantEvents": link(f"{_TENANT}/events", "get", "What happened to it", name=_CREATED),
    "TenantUsage": link(f"{_TENANT}/usage", "get", "What it uses now", name=_CREATED),
}


def _taken(name: str) -> ApiError:
    return ApiError(409, "metadata.name", f"tenant {name} already exists; PATCH it instead")


async def _create(context: WebContext, tenant: Tenant) -> ApplyResult:
    try:
        return await context.creates.create(tenant)
    except AlreadyExists as error:
        raise _taken(tenant.name) from error


@router.post("/tenants", status_code=201, response_model=WriteResult, summary="Create a tenant",
             responses={201: {"links": TENANT_LINKS},
                        200: {"model": WriteResult, "description": "With dry_run: what would be created, and where"}})
async def create_tenant(
    tenant: Annotated[Tenant, Body(openapi_examples=TENANT_EXAMPLES)], context: ContextDep, token: TenantWriter,
    once: IdempotencyDep, dry_run: DryRun = False,
) -> Any:
    fresh = tenant.model_copy(update={"status": None})
    if once.key is None and not dry_run:
        # The common case: queued for the writer thread, written with the creates arriving meanwhile.
        return once.respond(201, _result(await _create(context, fresh), False))

    def answer() -> tuple[int, BaseModel]:
        if not dry_run:
            # The same writer as above, from this worker thread: a create sent with a key is batched too.
            return 201, _result(from_thread.run(_create, context, fresh), False)
        try:
            result = context.store.create_tenant(fresh, dry_run=True)
        except AlreadyExists as error:
            raise _taken(tenant.name) from error
        assert result.desired is not None
        local = context.nodes()
        placement = would_place(
            context.store, result.desired, tenant.metadata.labels, context.config.strategy,
            local[0].name if local else None,
        )
        return 200, _result(result, dry_run).model_copy(
            update={"node": placement.node, "unschedulable": placement.unschedulable})

    return await run_in_threadpool(once.run, token.name, answer)


@router.get("/tenants", response_model=TenantList, summary="List tenants")
def list_tenants(
    store: StoreDep,
    _token: Reader,
    phase: Phase | None = None,
    label: Annotated[
        list[Annotated[str, StringConstraints(pattern=LABEL_SELECTOR_PATTERN)]] | None,
        Query(description="KEY=VALUE (a label key and value); repeat to require several"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str, Query(max_length=63, description="The `next_after` of the previous page")] = "",
) -> TenantList:
    labels: dict[str, str] = {}
    for item in label or []:
        key, _, value = item.partition("=")  # the pattern has made sure of KEY=VALUE
        labels[key] = value
    page = store.list_tenants(labels=labels or None, phase=phase.value if phase else None, limit=limit, after=after)
    return TenantList(items=page.items, next_after=page.next_after)


@router.get("/tenants/{name}", response_model=Tenant, summary="Get a tenant, with its status")
def get_tenant(name: TenantName, store: StoreDep, _token: Reader, response: Response) -> Tenant:
    tenant = _existing(store, name)
    response.headers["ETag"] = f'"{tenant.metadata.generation}"'  # what a PATCH sends back as If-Match
    return tenant


IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", pattern=r'^(\*|(W/)?"?[0-9]{1,18}"?)$',
           description="The generation the change is based on (the ETag of GET, or metadata.generation): "
           "409 when the tenant is at another generation, and nothing is written"),
]
PATCH_ATTEMPTS = 5  # a patch re-read and merged again when another write landed between its read and write


def _generation(if_match: str | None) -> int | None:
    if if_match is None or if_match == "*":
        return None
    return int(if_match.removeprefix("W/").strip('"'))


@router.patch("/tenants/{name}", response_model=WriteResult, summary="Change a tenant's spec or labels")
def patch_tenant(
    name: TenantName, patch: TenantPatch, store: StoreDep, token: TenantWriter, once: IdempotencyDep,
    dry_run: DryRun = False, if_match: IfMatch = None,
) -> Any:
    """A merge patch is applied to the tenant as read, and written only if it is still as read (a
    compare-and-set): a concurrent change is never overwritten. Without `If-Match`, a patch that lost the
    race is merged again onto the newer tenant; with it, a tenant at another generation answers 409."""
    expected = _generation(if_match)

    def answer() -> tuple[int, BaseModel]:
        for _attempt in range(PATCH_ATTEMPTS):
            current = _existing(store, name)
            generation = current.metadata.generation
            if expected is not None and generation != expected:
                raise ApiError(409, "If-Match", f"the tenant is at generation {generation}, not {expected}; "
                               "read it again and reapply the change")
            document = current.model_dump(mode="json", by_alias=True, exclude={"status"})
            document["metadata"] = {"name": name, "labels": document["metadata"]["labels"]}
            if patch.labels is not None:
                document["metadata"]["labels"] = patch.labels
            if patch.spec is not None:
                document["spec"] = _merge(document["spec"], patch.spec)
            try:
                tenant = Tenant.model_validate(document)
            except ValidationError as error:
                raise validation_error(error) from error
            read = Precondition(generation=generation, labels=dict(current.metadata.labels))
            try:
                return 200, _result(store.apply_tenant(tenant, dry_run=dry_run, precondition=read), dry_run)
            except StaleWrite:
                continue  # written meanwhile: read again (and, with If-Match, check the generation again)
        raise ApiError(409, "metadata.generation", "the tenant kept changing while it was patched; retry")

    return once.run(token.name, answer)


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


@router.delete("/tenants/{name}", status_code=202, response_model=WriteResult,
               summary="Delete a tenant and everything it has")
def delete_tenant(
    name: TenantName, store: StoreDep, token: TenantWriter, once: IdempotencyDep, dry_run: DryRun = False
) -> Any:
    def answer() -> tuple[int, BaseModel]:
        current = _existing(store, name)
        steps = _delete_plan(store, name)
        if not dry_run:
            store.request_delete(name)
        return 202, WriteResult(name=name, outcome="deleting", generation=current.metadata.generation,
                                dry_run=dry_run, plan=steps)

    return once.run(token.name, answer)


@router.get("/tenants/{name}/events", response_model=list[Event], summary="What happened to a tenant")
def tenant_events(
    name: TenantName, store: StoreDep, _token: Reader,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Event]:
    return store.events(tenant=name, after_id=after, limit=limit)


class PowerState(BaseModel):
    """Where a tenant is after a sleep or wake request."""

    name: str
    asleep: bool = Field(description="Whether the tenant is marked asleep now")
    changed: bool = Field(description="False when it already was so")
    phase: Phase = Field(description="Its phase as last recorded (with wait: the one waited for)")


WAKE_WAIT_SECONDS = 60.0
Wait = Annotated[bool, Query(description=f"Answer once the reconciler got there (at most {WAKE_WAIT_SECONDS:g}s)")]


def _power(context: WebContext, name: str, asleep: bool, who: str, wait: bool) -> PowerState:
    _existing(context.store, name)
    if asleep:
        changed = waking.request_sleep(context.store, name, who)
    else:
        changed = waking.request_wake(context.store, name, who)
    if context.nudge is not None:
        context.nudge(name)
    if wait:
        target = frozenset({Phase.SLEEPING} if asleep else {Phase.RUNNING})
        tenant = waking.wait_for_phase(context.store, name, target, WAKE_WAIT_SECONDS)
    else:
        tenant = _existing(context.store, name)
    record = context.store.desired(name)
    return PowerState(name=name, asleep=bool(record and record.spec and record.spec.asleep), changed=changed,
                      phase=tenant.status.phase if tenant.status else Phase.PENDING)


@router.post("/tenants/{name}/sleep", response_model=PowerState, summary="Put a tenant to sleep now")
def sleep_tenant(name: TenantName, context: ContextDep, token: TenantWriter, wait: Wait = False) -> PowerState:
    """Its container is stopped; filesystem, address, limits and firewall stay. The next request through the
    gateway (or a wake) starts it again. A tenant being deleted is not put to sleep (changed: false)."""
    return _power(context, name, True, f"token {token.name}", wait)


@router.post("/tenants/{name}/wake", response_model=PowerState, summary="Wake a sleeping tenant")
def wake_tenant(name: TenantName, context: ContextDep, token: TenantWriter, wait: Wait = False) -> PowerState:
    """Its container is started again. Waking an awake tenant changes nothing (changed: false)."""
    return _power(context, name, False, f"token {token.name}", wait)


@router.post("/tenants/{name}/authorize", response_model=Authorization,
             summary="Mint a claim that lets the customer into this tenant")
def authorize(
    name: TenantName, context: ContextDep, _token: TenantWriter,
    request: Annotated[AuthorizeRequest | None, Body()] = None,
) -> Authorization:
    tenant = _existing(context.store, name)
    record = context.store.desired(name)  # which tenant of this name: the claim is bound to it
    if record is None or record.created_revision is None:
        raise NotFound(f"metadata.name: tenant {name} not found")
    if tenant.deleting:
        raise ApiError(409, "metadata.name", f"tenant {name} is being deleted")
    ttl = (request or AuthorizeRequest()).ttl_seconds
    claim = context.signer.mint(name, created_revision=record.created_revision, ttl_seconds=ttl)
    url = f"{context.config.tenant_url(name)}?{CLAIM_PARAMETER}={claim.token}"
    return Authorization(tenant=name, claim=claim.token, url=url, expires_at=claim.expires_at)
