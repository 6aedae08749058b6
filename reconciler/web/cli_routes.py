"""The routes `fleet --server` speaks besides the tenant routes: the tenants table as `fleet get tenants`
prints it (server-side printing, as kubectl's `as=Table`: the client needs no models to show it), and
apply of many tenant documents at once, all or none. Both run the very code the CLI runs on the store
(`reconciler/tenant_table.py`, `reconciler/applying.py`, `reconciler/documents.py`)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from reconciler import tenant_table
from reconciler.applying import apply_tenants
from reconciler.documents import BadInput, parse_tenants
from reconciler.selectors import (
    FIELD_SELECTOR_PATTERN,
    LABEL_SELECTOR_LIST_PATTERN,
    needs_plans,
    parse_field_selector,
    parse_label_selector,
    select,
)
from reconciler.web.auth import Reader, TenantWriter
from reconciler.web.context import ContextDep, StoreDep
from reconciler.web.errors import ApiError, ErrorBody
from reconciler.web.tenants import WriteResult
from specs import Tenant
from specs.names import NAME_PATTERN
from state.aggregates import Aggregates

router = APIRouter(prefix="/api/v1", tags=["cli"], responses={
    code: {"model": ErrorBody} for code in (401, 403, 409, 422, 503)
})
MAX_DOCUMENTS = 1000


class TenantView(BaseModel):
    """One page of `fleet get tenants`: its columns and rows (a cell is text, null for none), or with
    `documents`, the tenants as `fleet get -o yaml` shows them."""

    columns: list[str]
    rows: list[list[str | None]]
    items: list[dict[str, Any]] = Field(description="With documents=true: the tenants, quantities as written")
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last page")


def _selector_error(error: BadInput, field: str) -> ApiError:
    return ApiError(422, field, str(error).split(": ", 1)[-1])


@router.get("/views/tenants", response_model=TenantView, summary="Tenants as `fleet get tenants` prints them")
def tenants_view(
    store: StoreDep,
    _token: Reader,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=63, description="Only this tenant")] = None,
    selector: Annotated[str | None, Query(
        max_length=2000, pattern=LABEL_SELECTOR_LIST_PATTERN, description="Labels: k=v,k2=v2 (all must match)")] = None,
    field_selector: Annotated[str | None, Query(
        max_length=2000, pattern=FIELD_SELECTOR_PATTERN,
        description="Fields: phase, node, template, plan with = or !=, e.g. phase!=Running,node=n1")] = None,
    wide: bool = False,
    documents: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    after: Annotated[str, Query(max_length=63, description="The `next_after` of the previous page")] = "",
) -> TenantView:
    try:
        labels = parse_label_selector(selector) if selector else None
    except BadInput as error:
        raise _selector_error(error, "selector") from error
    try:
        fields = parse_field_selector(field_selector) if field_selector else []
    except BadInput as error:
        raise _selector_error(error, "field_selector") from error
    next_after = None
    if name is not None:
        found = store.get_tenant(name)
        tenants = [found] if found is not None else []
    else:
        page = store.list_tenants(labels=labels, limit=limit, after=after)
        tenants, next_after = page.items, page.next_after
    if fields:
        tenants = select(tenants, fields, Aggregates(store).plans_by_tenant() if needs_plans(fields) else {})
    if documents:
        return TenantView(columns=[], rows=[], items=[tenant_table.document(t) for t in tenants],
                          next_after=next_after)
    return TenantView(columns=tenant_table.headers(wide=wide), rows=tenant_table.rows(store, tenants, wide=wide),
                      items=[], next_after=next_after)


def _document(value: Any) -> Any:
    return value  # checked by parse_tenants, which names the document and the field, as `fleet apply` does


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Kept as sent and checked as `fleet apply -f` checks a file; the schema is a tenant's.
    items: list[Annotated[Any, PlainValidator(_document, json_schema_input_type=Tenant)]] = Field(
        min_length=1, max_length=MAX_DOCUMENTS,
        description="Tenant documents (kind, metadata, spec), as `fleet apply -f` reads them; two naming one "
        "tenant are refused (422)")


class ApplyResults(BaseModel):
    results: list[WriteResult]


@router.post("/apply", response_model=ApplyResults, summary="Create or update tenants: all documents or none")
def apply_documents(request: ApplyRequest, context: ContextDep, _token: TenantWriter,
                    dry_run: bool = False) -> ApplyResults:
    try:
        tenants = parse_tenants(request.items)
    except BadInput as error:
        raise ApiError(422, "items", str(error)) from error
    local = context.nodes()
    applied = apply_tenants(context.store, tenants, dry_run=dry_run, strategy=context.config.strategy,
                            local=local[0].name if local else None)
    return ApplyResults(results=[
        WriteResult(name=a.name, outcome=a.outcome, generation=a.generation, dry_run=a.dry_run, plan=a.plan,
                    node=a.node, unschedulable=a.unschedulable)
        for a in applied
    ])
