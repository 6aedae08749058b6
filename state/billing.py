"""Billing: webhook events received and the subscriptions they describe, applied one at a time.

Each subscription's events are applied in a `SubscriptionTransaction` with its row locked, so an event's
check sees what the previous event of the same subscription applied; the tenant's write commits with it.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, text
from sqlalchemy.exc import IntegrityError

from specs import Event, Tenant
from specs.billing_plan import Plan
from state.access_schema import PLANS, SUBSCRIPTIONS, WEBHOOK_EVENTS
from state.columns import utc
from state.errors import Conflict, TenantOwned
from state.plans import plan_from_row
from state.records import ApplyOutcome
from state.schema import TENANTS
from state.store import Store


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



def _subscription_from_row(row: Any) -> Subscription:
    return Subscription(
        row.subscription_id, row.tenant, row.customer, row.plan, row.last_event_created, row.deleted_at is not None
    )


def _event_from_row(row: Any) -> WebhookEventRecord:
    return WebhookEventRecord(row.event_id, row.type, row.tenant, row.outcome, utc(row.received_at))


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
        return None if row is None else plan_from_row(row)

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


class Billing:
    """Webhook events and subscriptions of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.session = store.session

    def webhook_event(self, event_id: str) -> WebhookEventRecord | None:
        with self.session.read() as conn:
            row = conn.execute(select(WEBHOOK_EVENTS).where(WEBHOOK_EVENTS.c.event_id == event_id)).first()
        return None if row is None else _event_from_row(row)

    @contextmanager
    def subscription_transaction(self, subscription_id: str, *, customer: str) -> Iterator[SubscriptionTransaction]:
        """A write transaction with this subscription's row locked, for one billing event: the check, the
        tenant's write and the record commit together or not at all."""
        with self.session.write() as conn:
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
            with self.session.write() as conn:
                conn.execute(
                    WEBHOOK_EVENTS.insert().values(event_id=event_id, type=type, tenant=tenant, outcome=outcome)
                )
            return True
        except (Conflict, IntegrityError):
            return False

    def webhook_events(self, *, limit: int = 100) -> list[WebhookEventRecord]:
        with self.session.read() as conn:
            rows = conn.execute(
                select(WEBHOOK_EVENTS).order_by(WEBHOOK_EVENTS.c.received_at.desc()).limit(limit)
            ).all()
        return [_event_from_row(r) for r in rows]

    def subscription(self, subscription_id: str) -> Subscription | None:
        with self.session.read() as conn:
            row = conn.execute(
                select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.subscription_id == subscription_id)
            ).first()
        return None if row is None else _subscription_from_row(row)
