"""The store's side of the billing rules (issue 10), on both engines: a tenant belongs to exactly one
subscription, even for raw SQL and for a store made before the rule; a billing event's transaction leaves
nothing behind when it records nothing or fails."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from specs import Event
from state import Store, TenantOwned
from state.access import Access, Subscription
from state.migrations import migrate
from tests.helpers import tenant

pytestmark = pytest.mark.both_stores

_INSERT = text(
    "INSERT INTO billing_subscriptions (subscription_id, tenant, customer, plan, last_event_created, deleted_at)"
    " VALUES (:id, :tenant, 'cus_1', :plan, :last, CASE WHEN :deleted THEN CURRENT_TIMESTAMP END)"
)


def _insert(store: Store, id: str, tenant: str, plan: str | None, *, last: int = 0, deleted: bool = False) -> None:
    with store.engine.begin() as conn:
        conn.execute(_INSERT, {"id": id, "tenant": tenant, "plan": plan, "last": last, "deleted": deleted})


def test_raw_sql_cannot_give_one_tenant_two_owning_subscriptions(store: Store) -> None:
    _insert(store, "sub_1", "acme", "price_basic")
    _insert(store, "sub_old", "acme", "price_basic", deleted=True)  # a deleted one owns nothing
    _insert(store, "sub_other_product", "acme", None)  # nor does one that never had a plan
    with pytest.raises(IntegrityError):
        _insert(store, "sub_2", "acme", "price_big")
    owner = Access(store).subscription("sub_1")
    assert owner is not None and owner.owns_tenant


def test_a_store_made_before_the_rule_keeps_one_owner_per_tenant(store: Store) -> None:
    """Migration 7 on a store where two subscriptions own one tenant: the one with the oldest last event
    keeps it, the other is unbound (kept, owning nothing), and the rule holds from then on."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX billing_subscriptions_one_per_tenant")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 7")
    _insert(store, "sub_later", "acme", "price_big", last=200)
    _insert(store, "sub_first", "acme", "price_basic", last=100)
    _insert(store, "sub_solo", "solo", "price_basic", last=300)
    migrate(store.engine, store.dialect)
    access = Access(store)
    first, later, solo = (access.subscription(s) for s in ("sub_first", "sub_later", "sub_solo"))
    assert first is not None and first.owns_tenant
    assert later is not None and not later.owns_tenant and not later.deleted and later.tenant == "acme"
    assert solo is not None and solo.owns_tenant
    with pytest.raises(IntegrityError):
        _insert(store, "sub_3", "solo", "price_basic")


def test_an_event_transaction_that_records_nothing_or_fails_leaves_no_row(store: Store) -> None:
    access = Access(store)
    with access.subscription_transaction("sub_1", customer="cus_1") as unit:
        assert unit.subscription is None and unit.webhook_event("evt_1") is None
    assert access.subscription("sub_1") is None
    with pytest.raises(RuntimeError), access.subscription_transaction("sub_1", customer="cus_1") as unit:
        unit.apply_tenant(tenant("acme"))
        raise RuntimeError("a refusal after the write")
    assert access.subscription("sub_1") is None and store.get_tenant("acme") is None


def test_an_event_transaction_records_the_event_the_state_and_the_tenants_event_together(store: Store) -> None:
    access = Access(store)
    with access.subscription_transaction("sub_1", customer="cus_1") as unit:
        unit.apply_tenant(tenant("acme"))
        unit.record(event_id="evt_1", type="customer.subscription.created", tenant="acme", outcome="created",
                    subscription=Subscription("sub_1", "acme", "cus_1", "price_basic", 200, deleted=False),
                    events=[Event(tenant="acme", reason="BillingEvent", message="evt_1")])
    with access.subscription_transaction("sub_1", customer="cus_1") as unit:
        assert unit.subscription is not None and unit.subscription.last_event_created == 200
        assert unit.standing("acme").owner == "sub_1" and unit.standing("acme").exists
        unit.record(event_id="evt_0", type="customer.subscription.updated", tenant="acme", outcome="older",
                    subscription=Subscription("sub_1", "acme", "cus_1", "price_basic", 100, deleted=False))
    recorded = access.subscription("sub_1")
    assert recorded is not None and recorded.last_event_created == 200, "last_event_created moved backwards"
    assert access.webhook_event("evt_1") is not None and [e.message for e in store.events(tenant="acme")] == ["evt_1"]
    with pytest.raises(TenantOwned), access.subscription_transaction("sub_2", customer="cus_1") as unit:
        unit.record(event_id="evt_2", type="customer.subscription.created", tenant="acme", outcome="created",
                    subscription=Subscription("sub_2", "acme", "cus_1", "price_basic", 300, deleted=False))
    assert access.webhook_event("evt_2") is None and access.subscription("sub_2") is None
