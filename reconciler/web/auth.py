"""API tokens and roles: who may call what.

    viewer    read everything
    billing   read and write tenants, mint claims, (the webhook needs no token: it is signed)
    operator  everything, including plans

A request without a token, or with an unknown or revoked one, gets 401; a token whose role does not allow
the call gets 403; in both cases nothing is written. Tokens are compared by their SHA-256 only; this
module never logs a token. A live token is remembered for a second (`Access.authenticate`): a token
revoked by another process (`fleet token revoke`) is refused within about a second.
"""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from loguru import logger

from reconciler.web.context import AccessDep
from reconciler.web.errors import ApiError
from state.access import ApiToken, Role

_bearer = HTTPBearer(auto_error=False, description="An API token made with `fleet token create`")

READ = frozenset({Role.VIEWER, Role.BILLING, Role.OPERATOR})
WRITE_TENANTS = frozenset({Role.BILLING, Role.OPERATOR})
OPERATE = frozenset({Role.OPERATOR})


def require(roles: frozenset[Role], what: str) -> Callable[..., Coroutine[Any, Any, ApiToken]]:
    async def dependency(
        request: Request, access: AccessDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiToken:
        if credentials is None or not credentials.credentials:
            raise ApiError(401, "Authorization", "a Bearer token is required (fleet token create)",
                           {"WWW-Authenticate": "Bearer"})
        # A token seen within the last second is answered from memory; otherwise the store is asked off
        # the event loop, so a slow database never stalls other requests.
        token = access.cached_token(credentials.credentials)
        if token is None:
            token = await run_in_threadpool(access.authenticate, credentials.credentials)
        if token is None:
            raise ApiError(401, "Authorization", "the token is unknown or revoked", {"WWW-Authenticate": "Bearer"})
        if token.role not in roles:
            logger.bind(token=token.name, role=token.role.value, path=request.url.path).info("Refused a token's role")
            allowed = ", ".join(sorted(r.value for r in roles))
            raise ApiError(403, "Authorization", f"role {token.role.value} may not {what}; needs {allowed}")
        return token

    return dependency


Reader = Annotated[ApiToken, Depends(require(READ, "read"))]
TenantWriter = Annotated[ApiToken, Depends(require(WRITE_TENANTS, "write tenants or mint claims"))]
Operator = Annotated[ApiToken, Depends(require(OPERATE, "change plans"))]
