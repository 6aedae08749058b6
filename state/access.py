"""Data access for the doors (issue 5): API tokens, idempotency keys, billing webhook events and
subscriptions, plans and claim signing keys (the watch stream's change feed is `state.feed`).

Uses the same engine and transaction helpers as `Store`; like it, it is the only code that speaks SQL for
these tables. It never stores an API token's secret (only its SHA-256) and never returns a row or a dict
to the layers above: typed records only.
"""

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from specs import Event, Network, NotFound, Resources, Tenant
from specs.plan import Plan
from state.access_schema import (
    API_TOKENS,
    IDEMPOTENCY_KEYS,
    PLANS,
    ROLES,
    SIGNING_KEYS,
    SUBSCRIPTIONS,
    WEBHOOK_EVENTS,
)
from state.errors import Conflict, TenantOwned, UnknownReference
from state.records import ApplyOutcome
from state.schema import TEMPLATES, TENANTS
from state.store import Store

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


IN_PROGRESS = 0  # the status code of a key claimed by a request still being answered


@dataclass(frozen=True)
class StoredResponse:
    request_hash: str
    status_code: int
    body: str

    @property
    def in_progress(self) -> bool:
        """The key is claimed by a request that has not answered yet."""
        return self.status_code == IN_PROGRESS


@dataclass(frozen=True)
class WebhookEventRecord:
    event_id: str
    type: str
    tenant: str | None
    outcome: str
    received_at: datetime | None


@dataclass(frozen=True)
class Subscription:
    """A billing subscription as the store last applied it. It owns `tenant` from the first plan applied
    until it is deleted; without a plan (never provisioned) it owns nothing and `tenant` is only the name
    it asked for."""

    subscription_id: str
    tenant: str
    customer: str | None
    plan: str | None
    last_event_created: int
    deleted: bool

    @property
    def owns_tenant(self) -> bool:
        return self.plan is not None and not self.deleted


@dataclass(frozen=True)
class TenantStanding:
    """A tenant name as a billing event sees it: does the tenant exist, is it being deleted, and which
    subscription (if any) owns it."""

    name: str
    exists: bool
    deleting: bool
    owner: str | None


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: str
    created_at: datetime | None
    retired_at: datetime | None
    revoked_at: datetime | None

    @property
    def usable(self) -> bool:
        return self.revoked_at is None


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _plan_from_row(row: Any) -> Plan:
    ports = None if row.ingress_ports is None else tuple(json.loads(row.ingress_ports))
    return Plan.model_construct(
        kind="Plan",
        id=row.id,
        template=row.template,
        resources=Resources.model_construct(
            cpu=row.cpu_millicores, memory=row.memory_bytes, disk=row.disk_bytes, pids=row.pids,
            io=row.io_bytes_per_second,
        ),
        network=Network.model_construct(ingress=ports),
        description=row.description,
    )


def _key_from_row(row: Any) -> SigningKey:
    return SigningKey(row.kid, row.secret, _utc(row.created_at), _utc(row.retired_at), _utc(row.revoked_at))


def _subscription_from_row(row: Any) -> Subscription:
    return Subscription(
        row.subscription_id, row.tenant, row.customer, row.plan, row.last_event_created, row.deleted_at is not None
    )


def _event_from_row(row: Any) -> WebhookEventRecord:
    return WebhookEventRecord(row.event_id, row.type, row.tenant, row.outcome, _utc(row.received_at))


# Makes sure the subscription's row exists so that it can be locked: a concurrent event of the same new
# subscription waits here for this transaction (PostgreSQL: on the primary key; SQLite: writers are serial).
_CLAIM_SUBSCRIPTION = text(
    """
    INSERT INTO billing_subscriptions (subscription_id, tenant, customer, plan, last_event_created, deleted_at)
    VALUES (:subscription_id, '', :customer, NULL, 0, NULL)
    ON CONFLICT (subscription_id) DO NOTHING
    """
)


class SubscriptionTransaction:
    """One billing event's check, apply and record: one write transaction with the subscription's row
    locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write transaction, BEGIN IMMEDIATE, excludes every
    other writer). Another event of the same subscription waits until this one commits or rolls back, so
    its check sees what this one applied. Made by `Access.subscription_transaction`; an exception out of
    the `with` block rolls everything back.

    Holds a write lock: no I/O but the store's inside it."""

    def __init__(self, store: Store, conn: Connection, subscription_id: str, known: Subscription | None) -> None:
        self._store = store
        self._conn = conn
        self.subscription_id = subscription_id
        self.subscription = known  # as locked; None when Fleet never recorded this subscription
        self._recorded = False

    def webhook_event(self, event_id: str) -> WebhookEventRecord | None:
        row = self._conn.execute(select(WEBHOOK_EVENTS).where(WEBHOOK_EVENTS.c.event_id == event_id)).first()
        return None if row is None else _event_from_row(row)

    def plan(self, plan_id: str) -> Plan | None:
        row = self._conn.execute(select(PLANS).where(PLANS.c.id == plan_id)).first()
        return None if row is None else _plan_from_row(row)

    def standing(self, name: str) -> TenantStanding:
        tenant = self._conn.execute(
            select(TENANTS.c.deletion_requested_at).where(TENANTS.c.name == name)
        ).first()
        owner = self._conn.execute(
            select(SUBSCRIPTIONS.c.subscription_id).where(
                and_(SUBSCRIPTIONS.c.tenant == name, SUBSCRIPTIONS.c.plan.is_not(None),
                     SUBSCRIPTIONS.c.deleted_at.is_(None))
            )
        ).scalars().first()
        return TenantStanding(name, tenant is not None, tenant is not None and tenant.deletion_requested_at is not None,
                              owner)

    def apply_tenant(self, tenant: Tenant) -> ApplyOutcome:
        return self._store.apply_tenant_in(self._conn, tenant)

    def request_delete(self, name: str) -> bool:
        return self._store.request_delete_in(self._conn, name)

    def record(self, *, event_id: str, type: str, tenant: str | None, outcome: str,
               subscription: Subscription | None, events: Sequence[Event] = ()) -> None:
        """Record the event as applied, the subscription's new state (None: unchanged) and the tenant's
        events. `last_event_created` only moves forward. Raises `TenantOwned` when the subscription would
        own a tenant another subscription owns."""
        self._conn.execute(
            WEBHOOK_EVENTS.insert().values(event_id=event_id, type=type, tenant=tenant, outcome=outcome)
        )
        if subscription is not None:
            assert subscription.subscription_id == self.subscription_id
            last = SUBSCRIPTIONS.c.last_event_created
            newest = case((last > subscription.last_event_created, last), else_=subscription.last_event_created)
            try:
                self._conn.execute(
                    SUBSCRIPTIONS.update()
                    .where(SUBSCRIPTIONS.c.subscription_id == self.subscription_id)
                    .values(tenant=subscription.tenant, customer=subscription.customer, plan=subscription.plan,
                            last_event_created=newest,
                            deleted_at=func.current_timestamp() if subscription.deleted else None)
                )
            except IntegrityError as error:  # the one-subscription-per-tenant index: a concurrent binding won
                raise TenantOwned(subscription.tenant, None) from error
            self._recorded = True
        self._store.append_events_in(self._conn, events)

    def _finish(self) -> None:
        """Drop the row claimed for locking when nothing recorded a state for it."""
        if self.subscription is None and not self._recorded:
            self._conn.execute(SUBSCRIPTIONS.delete().where(SUBSCRIPTIONS.c.subscription_id == self.subscription_id))


class Access:
    """Access tables of one store. Thread-safe as the store is: each call takes its own connection.

    `authenticate` remembers a live token for `token_cache_seconds` (by its hash, never the secret), so a
    busy API reads the token table about once a second per token: a revocation by another process takes
    effect within that time, one through this object at once."""

    TOKEN_CACHE_LIMIT = 10_000

    def __init__(
        self, store: Store, *, token_cache_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self._read = store._read
        self._write = store._write
        self._token_cache_seconds = token_cache_seconds
        self._clock = clock
        self._tokens: dict[str, tuple[ApiToken, float]] = {}  # token hash -> (token, valid until)

    # -- API tokens --------------------------------------------------------------------------------
    def create_token(self, *, name: str, role: Role) -> tuple[ApiToken, str]:
        """A new token; returns it and its secret, which is shown once and never stored."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._write() as conn:
                conn.execute(API_TOKENS.insert().values(name=name, role=role.value, token_hash=hash_secret(secret)))
        except Conflict as error:
            raise Conflict(f"token {name}: already exists; revoke it or choose another name") from error
        token = self.get_token(name)
        assert token is not None
        return token, secret

    def get_token(self, name: str) -> ApiToken | None:
        with self._read() as conn:
            row = conn.execute(select(API_TOKENS).where(API_TOKENS.c.name == name)).first()
        return None if row is None else ApiToken(row.name, Role(row.role), _utc(row.created_at), _utc(row.revoked_at))

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
        with self._read() as conn:
            row = conn.execute(
                select(API_TOKENS).where(and_(API_TOKENS.c.token_hash == digest, API_TOKENS.c.revoked_at.is_(None)))
            ).first()
        if row is None:
            self._tokens.pop(digest, None)
            return None
        token = ApiToken(row.name, Role(row.role), _utc(row.created_at))
        if self._token_cache_seconds > 0:
            if len(self._tokens) >= self.TOKEN_CACHE_LIMIT:
                self._tokens.clear()
            self._tokens[digest] = (token, self._clock() + self._token_cache_seconds)
        return token

    def list_tokens(self) -> list[ApiToken]:
        with self._read() as conn:
            rows = conn.execute(select(API_TOKENS).order_by(API_TOKENS.c.name)).all()
        return [ApiToken(r.name, Role(r.role), _utc(r.created_at), _utc(r.revoked_at)) for r in rows]

    def revoke_token(self, name: str) -> None:
        try:
            self._revoke_token(name)
        finally:
            for digest, (token, _until) in list(self._tokens.items()):
                if token.name == name:
                    self._tokens.pop(digest, None)

    def _revoke_token(self, name: str) -> None:
        with self._write() as conn:
            result = conn.execute(
                API_TOKENS.update()
                .where(and_(API_TOKENS.c.name == name, API_TOKENS.c.revoked_at.is_(None)))
                .values(revoked_at=func.current_timestamp())
            )
            if result.rowcount == 0 and conn.execute(
                select(API_TOKENS.c.name).where(API_TOKENS.c.name == name)
            ).first() is None:
                raise NotFound(f"token {name} not found")

    # -- idempotency keys --------------------------------------------------------------------------
    def stored_response(self, *, principal: str, key: str) -> StoredResponse | None:
        with self._read() as conn:
            row = conn.execute(
                select(IDEMPOTENCY_KEYS).where(
                    and_(IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key)
                )
            ).first()
        return None if row is None else StoredResponse(row.request_hash, row.status_code, row.response_body)

    def claim_key(
        self, *, principal: str, key: str, request_hash: str, stale_after: timedelta = timedelta(seconds=60)
    ) -> StoredResponse | None:
        """Claim a key before answering the request: None when this request now holds it (answer, then
        `store_response` or `release_key`); otherwise what the key holds, an answer or a claim in progress.
        A claim older than `stale_after` is of a request that died without answering: it is taken over.

        Looks before it writes: a request waiting on another's claim then only reads, and never queues on
        SQLite's write lock behind the very request it waits for."""
        existing = self.stored_response(principal=principal, key=key)
        if existing is None:
            with self._write() as conn:
                claimed = self._insert_key(conn, principal, key, StoredResponse(request_hash, IN_PROGRESS, ""))
            if claimed:
                return None
            existing = self.stored_response(principal=principal, key=key)  # claimed by a concurrent request
            if existing is None:  # and released meanwhile: look again on the next call
                return StoredResponse(request_hash, IN_PROGRESS, "")
        if existing.in_progress and existing.request_hash == request_hash:
            with self._write() as conn:
                taken = conn.execute(
                    IDEMPOTENCY_KEYS.update()
                    .where(and_(IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key,
                                IDEMPOTENCY_KEYS.c.status_code == IN_PROGRESS,
                                IDEMPOTENCY_KEYS.c.created_at < datetime.now(UTC) - stale_after))
                    .values(created_at=func.current_timestamp())
                ).rowcount
            if taken:
                return None
        return existing

    def release_key(self, *, principal: str, key: str) -> None:
        """Give up a claim without an answer (the request failed in a way worth retrying)."""
        with self._write() as conn:
            conn.execute(IDEMPOTENCY_KEYS.delete().where(and_(
                IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key,
                IDEMPOTENCY_KEYS.c.status_code == IN_PROGRESS)))

    def store_response(self, *, principal: str, key: str, response: StoredResponse) -> StoredResponse:
        """Keep the first answer for a key (filling this request's claim); if another request stored one
        first, return that one."""
        with self._write() as conn:
            filled = conn.execute(
                IDEMPOTENCY_KEYS.update()
                .where(and_(IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key,
                            IDEMPOTENCY_KEYS.c.status_code == IN_PROGRESS,
                            IDEMPOTENCY_KEYS.c.request_hash == response.request_hash))
                .values(status_code=response.status_code, response_body=response.body)
            ).rowcount
            if filled or self._insert_key(conn, principal, key, response):
                return response
        first = self.stored_response(principal=principal, key=key)
        assert first is not None
        return first

    def _insert_key(self, conn: Connection, principal: str, key: str, response: StoredResponse) -> bool:
        """Insert unless the key is there (either engine's ON CONFLICT DO NOTHING); True when inserted."""
        insert = pg_insert if self.store.dialect.name == "postgresql" else sqlite_insert
        return bool(conn.execute(
            insert(IDEMPOTENCY_KEYS)
            .values(principal=principal, key=key, request_hash=response.request_hash,
                    status_code=response.status_code, response_body=response.body)
            .on_conflict_do_nothing(index_elements=["principal", "key"])
        ).rowcount)

    # -- billing webhook events and subscriptions --------------------------------------------------
    def webhook_event(self, event_id: str) -> WebhookEventRecord | None:
        with self._read() as conn:
            row = conn.execute(select(WEBHOOK_EVENTS).where(WEBHOOK_EVENTS.c.event_id == event_id)).first()
        return None if row is None else _event_from_row(row)

    @contextmanager
    def subscription_transaction(self, subscription_id: str, *, customer: str) -> Iterator[SubscriptionTransaction]:
        """A write transaction with this subscription's row locked, for one billing event: the check, the
        tenant's write and the record commit together or not at all."""
        with self._write() as conn:
            claimed = conn.execute(_CLAIM_SUBSCRIPTION, {"subscription_id": subscription_id, "customer": customer})
            row = conn.execute(
                select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.subscription_id == subscription_id).with_for_update()
            ).one()
            unit = SubscriptionTransaction(self.store, conn, subscription_id,
                                           None if claimed.rowcount else _subscription_from_row(row))
            yield unit
            unit._finish()

    def record_webhook_event(self, *, event_id: str, type: str, tenant: str | None, outcome: str) -> bool:
        """Record an event that is no subscription's (a subscription's events are recorded by its
        `subscription_transaction`). False when the event id was already recorded (a concurrent replay)."""
        try:
            with self._write() as conn:
                conn.execute(
                    WEBHOOK_EVENTS.insert().values(event_id=event_id, type=type, tenant=tenant, outcome=outcome)
                )
            return True
        except (Conflict, IntegrityError):
            return False

    def webhook_events(self, *, limit: int = 100) -> list[WebhookEventRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(WEBHOOK_EVENTS).order_by(WEBHOOK_EVENTS.c.received_at.desc()).limit(limit)
            ).all()
        return [_event_from_row(r) for r in rows]

    def subscription(self, subscription_id: str) -> Subscription | None:
        with self._read() as conn:
            row = conn.execute(
                select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.subscription_id == subscription_id)
            ).first()
        return None if row is None else _subscription_from_row(row)

    # -- plans -------------------------------------------------------------------------------------
    def apply_plans(self, plans: Sequence[Plan]) -> None:
        """Create or replace plans, all or none. A plan naming an unknown template is refused."""
        with self._write() as conn:
            for plan in plans:
                if conn.execute(select(TEMPLATES.c.name).where(TEMPLATES.c.name == plan.template)).first() is None:
                    raise UnknownReference("template",
                                           f"unknown template {plan.template!r}; see fleet template list")
                values = {
                    "template": plan.template,
                    "cpu_millicores": plan.resources.cpu,
                    "memory_bytes": plan.resources.memory,
                    "disk_bytes": plan.resources.disk,
                    "pids": plan.resources.pids,
                    "io_bytes_per_second": plan.resources.io,
                    "ingress_ports": None if plan.network.ingress is None else json.dumps(list(plan.network.ingress)),
                    "description": plan.description,
                }
                if conn.execute(PLANS.update().where(PLANS.c.id == plan.id).values(**values)).rowcount == 0:
                    conn.execute(PLANS.insert().values(id=plan.id, **values))

    def get_plan(self, plan_id: str) -> Plan | None:
        with self._read() as conn:
            row = conn.execute(select(PLANS).where(PLANS.c.id == plan_id)).first()
        return None if row is None else _plan_from_row(row)

    def list_plans(self) -> list[Plan]:
        with self._read() as conn:
            rows = conn.execute(select(PLANS).order_by(PLANS.c.id)).all()
        return [_plan_from_row(row) for row in rows]

    def delete_plan(self, plan_id: str) -> None:
        with self._write() as conn:
            if conn.execute(PLANS.delete().where(PLANS.c.id == plan_id)).rowcount == 0:
                raise NotFound(f"plan {plan_id} not found")

    # -- claim signing keys ------------------------------------------------------------------------
    def signing_keys(self) -> list[SigningKey]:
        """Every key, newest first (revoked ones included, so a claim they signed can be refused)."""
        with self._read() as conn:
            rows = conn.execute(select(SIGNING_KEYS).order_by(SIGNING_KEYS.c.created_at.desc(),
                                                              SIGNING_KEYS.c.kid.desc())).all()
        return [_key_from_row(row) for row in rows]

    def rotate_signing_key(self) -> SigningKey:
        """A new active key; the previous ones are retired: they still verify claims, sign no new ones."""
        kid = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
        with self._write() as conn:
            conn.execute(
                SIGNING_KEYS.update().where(SIGNING_KEYS.c.retired_at.is_(None)).values(
                    retired_at=func.current_timestamp()
                )
            )
            conn.execute(SIGNING_KEYS.insert().values(kid=kid, secret=secrets.token_urlsafe(48)))
        return next(key for key in self.signing_keys() if key.kid == kid)

    def active_signing_key(self) -> SigningKey:
        """The key new claims are signed with; made on first use."""
        for key in self.signing_keys():
            if key.retired_at is None and key.revoked_at is None:
                return key
        return self.rotate_signing_key()

    def revoke_signing_key(self, kid: str) -> None:
        """Claims signed with this key are refused from now on."""
        with self._write() as conn:
            result = conn.execute(
                SIGNING_KEYS.update().where(SIGNING_KEYS.c.kid == kid).values(
                    revoked_at=func.current_timestamp(), retired_at=func.coalesce(SIGNING_KEYS.c.retired_at,
                                                                                 func.current_timestamp())
                )
            )
            if result.rowcount == 0:
                raise NotFound(f"signing key {kid} not found")
