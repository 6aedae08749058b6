"""Claims: short-lived signed tokens (JWT, HS256) that let one customer into one tenant's container.

A claim's audience is the tenant's name, so a claim for one tenant never opens another. Keys live in the
store with a key id (`kid` in the JWT header): rotating makes a new signing key and keeps the old ones
for verification, so claims already issued stay valid until they expire; revoking a key refuses every
claim it signed. This module never logs a claim or a key.
"""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from state.access import Access, SigningKey

ISSUER = "fleet"
DEFAULT_TTL_SECONDS = 3600
ALGORITHM = "HS256"


class ClaimRefused(Exception):
    """A claim that does not let its bearer in. `wrong_tenant` means valid, but for another tenant."""

    def __init__(self, rule: str, *, wrong_tenant: bool = False) -> None:
        super().__init__(rule)
        self.rule = rule
        self.wrong_tenant = wrong_tenant


@dataclass(frozen=True)
class MintedClaim:
    token: str
    tenant: str
    kid: str
    expires_at: datetime


@dataclass(frozen=True)
class VerifiedClaim:
    tenant: str
    kid: str
    expires_at: float


class ClaimSigner:
    """Mints and verifies claims. Keys are cached for `cache_seconds`, so a revoked key is refused within
    that time on every process sharing the store."""

    def __init__(
        self, access: Access, *, cache_seconds: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.access = access
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self, *, force: bool = False) -> dict[str, SigningKey]:
        now = time.monotonic()
        with self._lock:
            if force or now - self._loaded_at > self.cache_seconds:
                self._keys = {key.kid: key for key in self.access.signing_keys()}
                self._loaded_at = now
            return self._keys

    def mint(self, tenant: str, *, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> MintedClaim:
        key = self.access.active_signing_key()
        issued = int(self.clock())
        expires = issued + ttl_seconds
        token = jwt.encode(
            {"iss": ISSUER, "sub": tenant, "aud": tenant, "iat": issued, "exp": expires, "jti": uuid.uuid4().hex},
            key.secret,
            algorithm=ALGORITHM,
            headers={"kid": key.kid},
        )
        return MintedClaim(token, tenant, key.kid, datetime.fromtimestamp(expires, UTC))

    def verify(self, token: str, tenant: str) -> VerifiedClaim:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise ClaimRefused("the claim is not a valid token") from error
        kid = header.get("kid")
        if not isinstance(kid, str) or header.get("alg") != ALGORITHM:
            raise ClaimRefused("the claim is not signed by this fleet")
        key = self._refresh().get(kid) or self._refresh(force=True).get(kid)
        if key is None:
            raise ClaimRefused("the claim is signed with an unknown key")
        if not key.usable:
            raise ClaimRefused("the claim is signed with a revoked key")
        try:
            payload = jwt.decode(
                token, key.secret, algorithms=[ALGORITHM], audience=tenant, issuer=ISSUER,
                options={"require": ["exp", "aud", "sub", "iss"], "verify_exp": False},
            )
        except jwt.InvalidAudienceError as error:
            raise ClaimRefused(f"the claim is for another tenant, not {tenant}", wrong_tenant=True) from error
        except jwt.PyJWTError as error:
            raise ClaimRefused(f"the claim is invalid: {error}") from error
        expires = float(payload["exp"])
        if expires <= self.clock():  # our clock, so tests can move it
            raise ClaimRefused("the claim has expired; ask for a new one")
        return VerifiedClaim(tenant=str(payload["sub"]), kid=kid, expires_at=expires)
