"""The API application: one FastAPI app per `WebContext`, with every route, the error mapping and the
OpenAPI document (`/api/v1/openapi.json`, docs at `/api/v1/docs`).

Build it with `create_app(WebContext(store, config))`. It holds no global state, and it never talks to
the host: the reconciler does, from the records the API writes. One exception: the exec websocket
(`exec_routes`) runs a command through this node's driver when `fleet up` gave it one (`local_exec`).
"""

from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from reconciler.web import (
    cli_routes,
    dashboard,
    errors,
    exec_routes,
    fleet_routes,
    observability,
    tenants,
    watch,
    webhooks,
)
from reconciler.web.auth import Operator, Reader, TenantWriter
from reconciler.web.body_limit import BodyLimit, BodyTooLarge, too_large_response
from reconciler.web.context import AccessDep, ContextDep, StoreDep, WebConfig, WebContext
from reconciler.web.idempotency import IdempotencyDep
from reconciler.web.openapi import finish

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
        responses={413: {"model": errors.ErrorBody, "description": "The request body is over the limit "
                         "(FLEET_MAX_BODY, 1Mi by default); nothing was read past it"}},
    )
    app.state.context = context
    app.state.closing = False
    errors.install(app)
    # Every route: a body over the limit gets 413 before it is read whole (a declared one before any route runs).
    app.add_middleware(BodyLimit, max_bytes=context.config.max_body_bytes)

    async def on_too_large(_request: Request, error: Exception) -> Response:
        assert isinstance(error, BodyTooLarge)
        return too_large_response(error)

    app.add_exception_handler(BodyTooLarge, on_too_large)
    for module in (tenants, cli_routes, fleet_routes, watch, webhooks, dashboard, observability, exec_routes):
        app.include_router(module.router)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness, and the store's revision",
             responses={503: {"model": errors.ErrorBody, "description": "The store is unavailable"}})
    def healthz() -> Health:
        return Health(ok=True, revision=context.store.current_revision())

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

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
