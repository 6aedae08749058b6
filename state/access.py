"""Data access for the doors: API tokens, idempotency keys, billing webhook events and subscriptions,
plans and claim signing keys (the watch stream's change feed is `state.feed`).

A thin facade over one module per concept (`tokens`, `idempotency`, `billing`, `plans`, `signing_keys`),
all on the store's `Session`. Like the store, it is the only code that speaks SQL for these tables. It
never stores an API token's secret (only its SHA-256) and never returns a row or a dict to the layers
above: typed records only.
"""

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta

from specs.billing_plan import Plan
from state.billing import Billing, Subscription, SubscriptionTransaction, TenantStanding, WebhookEventRecord
from state.idempotency import IN_PROGRESS, IdempotencyKeys, StoredResponse
from state.plans import Plans
from state.signing_keys import SigningKey, SigningKeys
from state.store import Store
from state.tokens import TOKEN_PREFIX, ApiToken, Role, Tokens, hash_secret


class Access:
    """Access tables of one store. Thread-safe as the store is: each call takes its own connection.

    `authenticate` remembers a live token for `token_cache_seconds` (by its hash, never the secret), so a
    busy API reads the token table about once a second per token: a revocation by another process takes
    effect within that time, one through this object at once."""

    TOKEN_CACHE_LIMIT = Tokens.TOKEN_CACHE_LIMIT

    def __init__(
        self, store: Store, *, token_cache_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.session = store.session
        self.tokens = Tokens(store.session, token_cache_seconds=token_cache_seconds, clock=clock)
        self.keys = IdempotencyKeys(store.session)
        self.billing = Billing(store)
        self.plans = Plans(store.session)
        self.signing = SigningKeys(store.session)

    # -- API tokens --------------------------------------------------------------------------------
    def create_token(self, *, name: str, role: Role) -> tuple[ApiToken, str]:
        """A new token; returns it and its secret, which is shown once and never stored."""
        return self.tokens.create_token(name=name, role=role)

    def get_token(self, name: str) -> ApiToken | None:
        return self.tokens.get_token(name)

    def cached_token(self, secret: str) -> ApiToken | None:
        """The live token with this secret if authenticated less than the cache time ago; no I/O."""
        return self.tokens.cached_token(secret)

    def authenticate(self, secret: str) -> ApiToken | None:
        """The live token with this secret, or None (unknown or revoked)."""
        return self.tokens.authenticate(secret)

    def list_tokens(self) -> list[ApiToken]:
        return self.tokens.list_tokens()

    def revoke_token(self, name: str) -> None:
        self.tokens.revoke_token(name)

    # -- idempotency keys --------------------------------------------------------------------------
    def stored_response(self, *, principal: str, key: str) -> StoredResponse | None:
        return self.keys.stored_response(principal=principal, key=key)

    def claim_key(
        self, *, principal: str, key: str, request_hash: str, stale_after: timedelta = timedelta(seconds=60)
    ) -> StoredResponse | None:
        """Claim a key before answering the request: None when this request now holds it."""
        return self.keys.claim_key(principal=principal, key=key, request_hash=request_hash, stale_after=stale_after)

    def release_key(self, *, principal: str, key: str) -> None:
        self.keys.release_key(principal=principal, key=key)

    def store_response(self, *, principal: str, key: str, response: StoredResponse) -> StoredResponse:
        """Keep the first answer for a key; if another request stored one first, return that one."""
        return self.keys.store_response(principal=principal, key=key, response=response)

    # -- billing webhook events and subscriptions --------------------------------------------------
    def webhook_event(self, event_id: str) -> WebhookEventRecord | None:
        return self.billing.webhook_event(event_id)

    def subscription_transaction(
        self, subscription_id: str, *, customer: str
    ) -> AbstractContextManager[SubscriptionTransaction]:
        """A write transaction with this subscription's row locked, for one billing event."""
        return self.billing.subscription_transaction(subscription_id, customer=customer)

    def record_webhook_event(self, *, event_id: str, type: str, tenant: str | None, outcome: str) -> bool:
        """Record an event that is no subscription's. False when the event id was already recorded."""
        return self.billing.record_webhook_event(event_id=event_id, type=type, tenant=tenant, outcome=outcome)

    def webhook_events(self, *, limit: int = 100) -> list[WebhookEventRecord]:
        return self.billing.webhook_events(limit=limit)

    def subscription(self, subscription_id: str) -> Subscription | None:
        return self.billing.subscription(subscription_id)

    # -- plans -------------------------------------------------------------------------------------
    def apply_plans(self, plans: Sequence[Plan]) -> None:
        """Create or replace plans, all or none. A plan naming an unknown template is refused."""
        self.plans.apply_plans(plans)

    def get_plan(self, plan_id: str) -> Plan | None:
        return self.plans.get_plan(plan_id)

    def list_plans(self) -> list[Plan]:
        return self.plans.list_plans()

    def delete_plan(self, plan_id: str) -> None:
        self.plans.delete_plan(plan_id)

    # -- claim signing keys ------------------------------------------------------------------------
    def signing_keys(self) -> list[SigningKey]:
        """Every key, newest first (revoked ones included, so a claim they signed can be refused)."""
        return self.signing.signing_keys()

    def rotate_signing_key(self) -> SigningKey:
        """A new active key; the previous ones are retired: they still verify claims, sign no new ones."""
        return self.signing.rotate_signing_key()

    def active_signing_key(self) -> SigningKey:
        """The key new claims are signed with; made on first use."""
        return self.signing.active_signing_key()

    def revoke_signing_key(self, kid: str) -> None:
        """Claims signed with this key are refused from now on."""
        self.signing.revoke_signing_key(kid)


__all__ = [
    "IN_PROGRESS",
    "TOKEN_PREFIX",
    "Access",
    "ApiToken",
    "Role",
    "SigningKey",
    "StoredResponse",
    "Subscription",
    "SubscriptionTransaction",
    "TenantStanding",
    "WebhookEventRecord",
    "hash_secret",
]
