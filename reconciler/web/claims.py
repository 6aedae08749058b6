"""Claims: short-lived signed tokens (JWT, HS256) that let one customer into one tenant's container.

A claim's audience is the tenant's name, so a claim for one tenant never opens another, and it carries the
tenant's creation revision (its identity), so a tenant deleted and created again under the same name does
not accept claims minted for the one before. Keys live in the store with a key id (`kid` in the JWT
header): rotating makes a new signing key and keeps the old ones for verification, so claims already
issued stay valid until they expire; revoking a key refuses every claim it signed. A `kid` the store does
not have is remembered (a bounded set that expires), so made-up key ids do not reach the store on every
request. This module never logs a claim or a key.
"""

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from state.access import Access, SigningKey

ISSUER = "fleet"
DEFAULT_TTL_SECONDS = 3600
ALGORITHM = "HS256"
# The private claim naming which tenant of that name the claim is for: its creation revision.
IDENTITY_CLAIM = "fleet_tenant_revision"


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
    tenant_revision: int | None  # the creation revision of the tenant it was minted for

    def check_identity(self, created_revision: int | None) -> None:
        """Refuse the claim unless it was minted for this very tenant, not an earlier one of its name."""
        if created_revision is None or self.tenant_revision != created_revision:
            raise ClaimRefused(f"the claim was issued for an earlier tenant named {self.tenant}; ask for a new one")


class ClaimSigner:
    """Mints and verifies claims. Keys are cached for `cache_seconds`, so a revoked key is refused within
    that time on every process sharing the store. An unknown `kid` makes it read the keys again at once (a
    key rotated by another process), but at most once per `forced_refresh_seconds`, and a kid still
    unknown afterwards is refused without the store for `unknown_kid_seconds` (at most `unknown_kids`)."""

    def __init__(
        self, access: Access, *, cache_seconds: float = 1.0, clock: Callable[[], float] = time.time,
        forced_refresh_seconds: float = 0.25, unknown_kid_seconds: float = 60.0, unknown_kids: int = 4096,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access = access
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.monotonic = monotonic
        self.forced_refresh_seconds = forced_refresh_seconds
        self.unknown_kid_seconds = unknown_kid_seconds
        self.unknown_kids = unknown_kids
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = float("-inf")
        self._unknown: OrderedDict[str, float] = OrderedDict()  # kid -> until (monotonic)
        self._lock = threading.Lock()

    def _load(self, now: float) -> None:
        self._keys = {key.kid: key for key in self.access.signing_keys()}
        self._loaded_at = now

    def _key(self, kid: str, *, store: bool) -> SigningKey | None:
        """The key of `kid`, or None. With `store` False, answers from the cache only, however old, and
        without the lock a thread reading the store holds (`_keys` is replaced whole, never changed)."""
        if not store:
            return self._keys.get(kid)
        with self._lock:
            now = self.monotonic()
            if now - self._loaded_at > self.cache_seconds:
                self._load(now)
            key = self._keys.get(kid)
            if key is not None:
                return key
            until = self._unknown.get(kid)
            if until is not None and until > now:
                return None
            if now - self._loaded_at >= self.forced_refresh_seconds:
                self._load(now)
                key = self._keys.get(kid)
                if key is not None:
                    self._unknown.pop(kid, None)
                    return key
            self._unknown[kid] = now + self.unknown_kid_seconds
            self._unknown.move_to_end(kid)
            while len(self._unknown) > self.unknown_kids:
                self._unknown.popitem(last=False)
            return None

    def _answers_without_store(self, kid: str) -> bool:
        """Whether the cache answers for `kid` now; lock-free, for the event loop (a stale guess only sends
        the check to a worker thread, or answers from a cache a moment old)."""
        now = self.monotonic()
        if now - self._loaded_at > self.cache_seconds:
            return False
        if kid in self._keys:
            return True
        until = self._unknown.get(kid)
        return (until is not None and until > now) or now - self._loaded_at < self.forced_refresh_seconds

    def mint(
        self, tenant: str, *, created_revision: int, ttl_seconds: int = DEFAULT_TTL_SECONDS
    ) -> MintedClaim:
        """A claim for the tenant `tenant` created at `created_revision` (`DesiredRecord.created_revision`)."""
        key = self.access.active_signing_key()
        issued = int(self.clock())
        expires = issued + ttl_seconds
        token = jwt.encode(
            {"iss": ISSUER, "sub": tenant, "aud": tenant, "iat": issued, "exp": expires, "jti": uuid.uuid4().hex,
             IDENTITY_CLAIM: created_revision},
            key.secret,
            algorithm=ALGORITHM,
            headers={"kid": key.kid},
        )
        return MintedClaim(token, tenant, key.kid, datetime.fromtimestamp(expires, UTC))

    @staticmethod
    def _kid(token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise ClaimRefused("the claim is not a valid token") from error
        kid = header.get("kid")
        if not isinstance(kid, str) or header.get("alg") != ALGORITHM:
            raise ClaimRefused("the claim is not signed by this fleet")
        return kid

    def verify(self, token: str, tenant: str) -> VerifiedClaim:
        """Signature, key, audience and expiry; may read the keys from the store. The tenant's identity is
        the caller's to check (`VerifiedClaim.check_identity`), against the tenant as it is now."""
        return self._verify(token, tenant, self._kid(token), store=True)

    async def verify_async(self, token: str, tenant: str) -> VerifiedClaim:
        """`verify` for an event loop: from the cache inline, and in a worker thread when only the store
        can answer, so a slow store never stalls other requests."""
        kid = self._kid(token)
        if self._answers_without_store(kid):
            return self._verify(token, tenant, kid, store=False)
        return await asyncio.to_thread(self._verify, token, tenant, kid, store=True)

    def _verify(self, token: str, tenant: str, kid: str, *, store: bool) -> VerifiedClaim:
        key = self._key(kid, store=store)
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
        revision = payload.get(IDENTITY_CLAIM)
        return VerifiedClaim(tenant=str(payload["sub"]), kid=kid, expires_at=expires,
                             tenant_revision=revision if isinstance(revision, int) else None)
