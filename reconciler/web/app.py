"""The API application: one FastAPI app per `WebContext`, with every route, the error mapping and the
OpenAPI document (`/api/v1/openapi.json`, docs at `/api/v1/docs`).

Build it with `create_app(WebContext(store, config))`. It holds no global state, and it never talks to
the host: the reconciler does, from the records the API writes.
"""

from fastapi import FastAPI
from pydantic import BaseModel

from reconciler.web import catalog, errors, tenants, watch, webhooks
from reconciler.web.auth import Operator, Reader, TenantWriter
from reconciler.web.context import AccessDep, ContextDep, StoreDep, WebConfig, WebContext
from reconciler.web.idempotency import IdempotencyDep

API_VERSION = "v1"


class Health(BaseModel):
    ok: bool
    revision: int


def create_app(context: WebContext) -> FastAPI:
    app = FastAPI(
        title="Fleet API",
        version=API_VERSION,
        description="Tenants, plans, claims and the billing webhook of a Fleet. Every route but the webhook "
        "and /healthz needs `Authorization: Bearer TOKEN` (fleet token create).",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.context = context
    app.state.closing = False
    errors.install(app)
    for module in (tenants, catalog, watch, webhooks):
        app.include_router(module.router)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness, and the store's revision")
    def healthz() -> Health:
        return Health(ok=True, revision=context.store.current_revision())

    return app


__all__ = [
    "AccessDep",
    "ContextDep",
    "IdempotencyDep",
    "Operator",
    "Reader",
    "StoreDep",
    "TenantWriter",
    "WebConfig",
    "WebContext",
    "create_app",
]
