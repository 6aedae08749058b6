"""API tokens: who may call the API, and in which role. Only a token's SHA-256 is stored, never its secret.

`Tokens.authenticate` remembers a live token for a short time (by its hash), so a busy API reads the
token table about once a second per token; a revocation through this object takes effect at once.
"""

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import and_, func, select

from specs import NotFound
from state.access_schema import API_TOKENS, ROLES
from state.columns import utc
from state.errors import Conflict
from state.session import Session

TOKEN_PREFIX = "fleet_"


class Role(StrEnum):
    BILLING = "billing"
    OPERATOR = "operator"
    VIEWER = "viewer"


assert tuple(r.value for r in Role) == ROLES


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: Role
    created_at: datetime | None
    revoked_at: datetime | None = None



def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tokens:
    """API tokens over one session, with a cache of live tokens by hash."""

    TOKEN_CACHE_LIMIT = 10_000

    def __init__(
        self, session: Session, *, token_cache_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session = session
        self._token_cache_seconds = token_cache_seconds
        self._clock = clock
        self._tokens: dict[str, tuple[ApiToken, float]] = {}  # token hash -> (token, valid until)

    def create_token(self, *, name: str, role: Role) -> tuple[ApiToken, str]:
        """A new token; returns it and its secret, which is shown once and never stored."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.session.write() as conn:
                conn.execute(API_TOKENS.insert().values(name=name, role=role.value, token_hash=hash_secret(secret)))
        except Conflict as error:
            raise Conflict(f"token {name}: already exists; revoke it or choose another name") from error
        token = self.get_token(name)
        assert token is not None
        return token, secret

    def get_token(self, name: str) -> ApiToken | None:
        with self.session.read() as conn:
            row = conn.execute(select(API_TOKENS).where(API_TOKENS.c.name == name)).first()
        return None if row is None else ApiToken(row.name, Role(row.role), utc(row.created_at), utc(row.revoked_at))

    def cached_token(self, secret: str) -> ApiToken | None:
        """The live token with this secret if it was authenticated less than the cache time ago; None
        means "ask `authenticate`". No I/O: an event loop may call it."""
        cached = self._tokens.get(hash_secret(secret))
        if cached is None or cached[1] <= self._clock():
            return None
        return cached[0]

    def authenticate(self, secret: str) -> ApiToken | None:
        """The live token with this secret, or None (unknown or revoked)."""
        digest = hash_secret(secret)
        cached = self._tokens.get(digest)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        with self.session.read() as conn:
            row = conn.execute(
                select(API_TOKENS).where(and_(API_TOKENS.c.token_hash == digest, API_TOKENS.c.revoked_at.is_(None)))
            ).first()
        if row is None:
            self._tokens.pop(digest, None)
            return None
        token = ApiToken(row.name, Role(row.role), utc(row.created_at))
        if self._token_cache_seconds > 0:
            if len(self._tokens) >= self.TOKEN_CACHE_LIMIT:
                self._tokens.clear()
            self._tokens[digest] = (token, self._clock() + self._token_cache_seconds)
        return token

    def list_tokens(self) -> list[ApiToken]:
        with self.session.read() as conn:
            rows = conn.execute(select(API_TOKENS).order_by(API_TOKENS.c.name)).all()
        return [ApiToken(r.name, Role(r.role), utc(r.created_at), utc(r.revoked_at)) for r in rows]

    def revoke_token(self, name: str) -> None:
        try:
            self._revoke_token(name)
        finally:
            for digest, (token, _until) in list(self._tokens.items()):
                if token.name == name:
                    self._tokens.pop(digest, None)

    def _revoke_token(self, name: str) -> None:
        with self.session.write() as conn:
            result = conn.execute(
                API_TOKENS.update()
                .where(and_(API_TOKENS.c.name == name, API_TOKENS.c.revoked_at.is_(None)))
                .values(revoked_at=func.current_timestamp())
            )
            if result.rowcount == 0 and conn.execute(
                select(API_TOKENS.c.name).where(API_TOKENS.c.name == name)
            ).first() is None:
                raise NotFound(f"token {name} not found")

