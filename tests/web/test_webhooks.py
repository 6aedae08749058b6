"""The billing webhook as Stripe calls it: signed deliveries, replays, out-of-order events, bad input."""

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from reconciler.web.context import WebConfig
from reconciler.web.errors import ApiError
from reconciler.web.webhooks import BillingWebhook, WebhookResult, sign, verify_signature
from specs import Resources
from specs.billing_plan import Plan
from state import Store
from state.access import Access
from tests.helpers import wait_for
from tests.web.conftest import OLD_WEBHOOK_SECRET, WEBHOOK_SECRET, Web, subscription_event
from tests.web.raw_http import raw_request

NAME = {"fleet_tenant": "acme"}


def test_a_signed_signup_creates_one_running_tenant_and_a_replay_changes_nothing(web: Web) -> None:
    web.plan("price_basic", memory="128Mi")
    event = subscription_event("evt_1", metadata=NAME)
    first = web.webhook(event)
    assert first.status_code == 200, first.text
    assert first.json()["tenant"] == "acme" and first.json()["outcome"] == "tenant created with plan price_basic"
    web.wait_running("acme")
    revision = web.store.current_revision()
    replay = web.webhook(event)
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert replay.json()["outcome"] == first.json()["outcome"]
    assert [t.metadata.name for t in web.store.list_tenants().items] == ["acme"]
    assert web.store.current_revision() == revision
    tenant = web.store.get_tenant("acme")
    assert tenant is not None and tenant.spec.resources.memory == 128 << 20
    assert tenant.metadata.labels["billing/subscription"] == "sub_1"


def test_a_plan_with_a_disk_bandwidth_gives_it_to_the_tenant_it_creates(web: Web) -> None:
    web.plan("price_io", io="20Mi")
    response = web.webhook(subscription_event("evt_io", price="price_io", metadata={"fleet_tenant": "streamer"}))
    assert response.status_code == 200, response.text
    tenant = web.store.get_tenant("streamer")
    assert tenant is not None and tenant.spec.resources.io == 20 << 20
    with web.client() as operator:
        bad = operator.put("/api/v1/plans/price_slow", json={"id": "price_slow", "template": "base",
                                                             "resources": {"io": "1Ki"}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "resources.io", bad.text


def test_a_tenant_name_is_derived_from_the_customer_when_metadata_has_none(web: Web) -> None:
    web.plan("price_basic")
    response = web.webhook(subscription_event("evt_2", customer="cus_NffrFeUfNV2Hib"))
    assert response.status_code == 200
    assert response.json()["tenant"].startswith("cus-nffrfeufnv2hib-")


def test_either_of_two_secrets_and_any_of_several_signatures_is_accepted(web: Web) -> None:
    web.plan("price_basic")
    assert web.webhook(subscription_event("evt_old", metadata=NAME), secret=OLD_WEBHOOK_SECRET).status_code == 200
    from reconciler.web.webhooks import sign

    now = int(time.time())
    payload_event = subscription_event("evt_multi", subscription="sub_2", metadata={"fleet_tenant": "two"})
    import json

    payload = json.dumps(payload_event).encode()
    good = sign(payload, "whsec_test_current", now).split(",")[1]
    header = f"t={now},v1={'0' * 64},{good}"
    assert web.webhook(payload_event, signature=header).status_code == 200


def test_bad_signature_stale_timestamp_malformed_body_and_unknown_plan_get_4xx_and_write_nothing(web: Web) -> None:
    web.plan("price_basic")
    event = subscription_event("evt_bad", metadata=NAME)
    cases = [
        (web.webhook(event, secret="whsec_wrong"), 400, "Stripe-Signature", "no signature matches"),
        (web.webhook(event, timestamp=int(time.time()) - 600), 400, "Stripe-Signature", "300 seconds"),
        (web.webhook(event, signature="garbage"), 400, "Stripe-Signature", "must be t=TIMESTAMP"),
        (web.webhook({"id": "evt_x", "type": "customer.subscription.created"}), 422, "created", "is required"),
        (web.webhook(subscription_event("evt_p", price="price_unknown", metadata=NAME)), 422,
         "data.object.items.data.0.price.id", "no plan for price 'price_unknown'"),
        (web.webhook(subscription_event("evt_n", metadata={"fleet_tenant": "Not A Name"})), 422,
         "data.object.metadata.fleet_tenant", "DNS label"),
    ]
    for response, status, field, rule in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["field"] == field and rule in error["rule"], error
    assert web.store.list_tenants().items == []
    assert web.access.webhook_events() == []


def test_updated_requotas_deleted_removes_everything_and_late_events_never_resurrect(web: Web) -> None:
    web.plan("price_basic", memory="128Mi")
    web.plan("price_big", memory="512Mi")
    start = int(time.time()) - 100
    assert web.webhook(subscription_event("evt_c", created=start, metadata=NAME)).status_code == 200
    web.wait_running("acme")
    updated = web.webhook(subscription_event("evt_u", "updated", price="price_big", created=start + 10))
    assert updated.json()["outcome"] == "tenant configured with plan price_big"
    wait_for(lambda: web.driver.inspect("acme").resources.memory == 512 << 20,  # type: ignore[union-attr]
             what="the re-quota on the host")
    stale = web.webhook(subscription_event("evt_old_u", "updated", price="price_basic", created=start + 5))
    assert stale.json()["outcome"] == "ignored: older than an event already applied"
    deleted = web.webhook(subscription_event("evt_d", "deleted", created=start + 20, status="canceled"))
    assert deleted.json()["outcome"] == "deleting tenant"
    wait_for(lambda: web.store.get_tenant("acme") is None, what="acme's record to go")
    assert web.driver.inspect("acme") is None and web.driver.leftovers() == []
    late = web.webhook(subscription_event("evt_late", "updated", price="price_big", created=start + 15))
    assert late.json()["outcome"] == "ignored: the subscription was deleted"
    late_created = web.webhook(subscription_event("evt_c2", created=start + 1, metadata=NAME))
    assert late_created.status_code == 200 and web.store.get_tenant("acme") is None
    receipt = [(e.reason, e.message) for e in web.store.events(tenant="acme", limit=100)]
    reasons = [reason for reason, _ in receipt]
    assert "Deleted" in reasons and "Finalized" in reasons
    assert any("customer.subscription.deleted evt_d" in message for _, message in receipt)


def test_an_unknown_event_type_is_acknowledged_and_recorded(web: Web) -> None:
    event = {"id": "evt_inv", "type": "invoice.paid", "created": int(time.time()), "data": {"object": {"id": "in_1"}}}
    response = web.webhook(event)
    assert response.status_code == 200 and response.json()["outcome"].startswith("ignored")
    recorded = web.access.webhook_event("evt_inv")
    assert recorded is not None and recorded.type == "invoice.paid"
    assert web.store.list_tenants().items == []


# -- issue 10: a tenant belongs to exactly one subscription ------------------------------------------------

def test_cancelling_a_subscription_fleet_never_provisioned_leaves_the_customers_tenant_running(web: Web) -> None:
    """The customer has a Fleet subscription and another product's (its `created` got 422: no plan);
    cancelling the other one is acknowledged and changes nothing."""
    web.plan("price_basic")
    start = int(time.time()) - 100
    fleet = web.webhook(subscription_event("evt_s1", subscription="sub_fleet", created=start))
    assert fleet.status_code == 200, fleet.text
    tenant = fleet.json()["tenant"]
    web.wait_running(tenant)
    other = web.webhook(subscription_event("evt_s2", subscription="sub_other", price="price_crm", created=start + 1))
    assert other.status_code == 422, other.text
    cancel = web.webhook(subscription_event("evt_s2_end", "deleted", subscription="sub_other", status="canceled",
                                            created=start + 2))
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["tenant"] is None and cancel.json()["outcome"].startswith("ignored: the subscription owns no")
    alive = web.store.get_tenant(tenant)
    assert alive is not None and alive.metadata.deletion_requested_at is None and web.phase(tenant) == "Running"
    recorded = web.access.webhook_event("evt_s2_end")
    assert recorded is not None and recorded.tenant is None
    # ... and that subscription's late `created` provisions nothing either.
    late = web.webhook(subscription_event("evt_s2_late", subscription="sub_other", created=start + 1))
    assert late.status_code == 200 and late.json()["outcome"] == "ignored: the subscription was deleted"


def test_a_second_subscription_of_the_same_customer_neither_replans_nor_deletes_its_tenant(web: Web) -> None:
    web.plan("price_basic", memory="128Mi")
    web.plan("price_big", memory="512Mi")
    start = int(time.time()) - 100
    first = web.webhook(subscription_event("evt_a", subscription="sub_1", created=start))
    assert first.status_code == 200, first.text
    tenant = first.json()["tenant"]
    second = web.webhook(subscription_event("evt_b", subscription="sub_2", price="price_big", created=start + 1))
    assert second.status_code == 409, second.text
    error = second.json()["error"]
    assert error["field"] == "data.object.customer" and "belongs to subscription sub_1" in error["rule"], error
    assert web.access.subscription("sub_2") is None and web.access.webhook_event("evt_b") is None
    update = web.webhook(subscription_event("evt_b2", "updated", subscription="sub_2", price="price_big",
                                            created=start + 2))
    assert update.status_code == 409, update.text
    cancel = web.webhook(subscription_event("evt_b3", "deleted", subscription="sub_2", status="canceled",
                                            created=start + 3))
    assert cancel.status_code == 200 and cancel.json()["tenant"] is None, cancel.text
    kept = web.store.get_tenant(tenant)
    assert kept is not None and kept.metadata.deletion_requested_at is None
    assert kept.spec.resources.memory == 128 << 20 and kept.metadata.labels["billing/subscription"] == "sub_1"
    owner = web.access.subscription("sub_1")
    assert owner is not None and owner.owns_tenant and owner.tenant == tenant


def test_metadata_naming_someone_elses_tenant_changes_nothing_and_the_billing_system_is_told(web: Web) -> None:
    web.plan("price_basic", memory="128Mi")
    web.plan("price_big", memory="512Mi")
    start = int(time.time()) - 100
    assert web.webhook(subscription_event("evt_v", created=start, metadata=NAME)).status_code == 200
    web.wait_running("acme")
    for kind, event_id in (("created", "evt_x1"), ("updated", "evt_x2")):
        hostile = web.webhook(subscription_event(event_id, kind, customer="cus_Mallory", subscription="sub_m",
                                                 price="price_big", created=start + 1, metadata=NAME))
        assert hostile.status_code == 409, hostile.text
        error = hostile.json()["error"]
        assert error["field"] == "data.object.metadata.fleet_tenant", error
        assert "belongs to subscription sub_1" in error["rule"], error
    cancel = web.webhook(subscription_event("evt_x3", "deleted", customer="cus_Mallory", subscription="sub_m",
                                            status="canceled", created=start + 2, metadata=NAME))
    assert cancel.status_code == 200 and cancel.json()["tenant"] is None, cancel.text
    acme = web.store.get_tenant("acme")
    assert acme is not None and acme.metadata.deletion_requested_at is None
    assert acme.spec.resources.memory == 128 << 20 and acme.metadata.labels["billing/customer"] == "cus_Acme1"
    assert web.phase("acme") == "Running"
    assert not any("evt_x" in e.message for e in web.store.events(tenant="acme", limit=100))


def test_a_tenant_no_subscription_made_is_not_handed_to_one(web: Web) -> None:
    web.plan("price_basic")
    with web.client() as operator:
        made = operator.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "acme"},
                                                       "spec": {"template": "base"}})
        assert made.status_code == 201, made.text
    taken = web.webhook(subscription_event("evt_t1", metadata=NAME))
    assert taken.status_code == 409 and "no subscription owns it" in taken.json()["error"]["rule"], taken.text
    cancel = web.webhook(subscription_event("evt_t2", "deleted", status="canceled", metadata=NAME))
    assert cancel.status_code == 200 and cancel.json()["tenant"] is None
    acme = web.store.get_tenant("acme")
    assert acme is not None and acme.metadata.deletion_requested_at is None


def test_once_its_owner_is_cancelled_and_the_tenant_gone_another_subscription_may_take_the_name(web: Web) -> None:
    web.plan("price_basic")
    start = int(time.time()) - 100
    assert web.webhook(subscription_event("evt_o1", created=start, metadata=NAME)).status_code == 200
    assert web.webhook(subscription_event("evt_o2", "deleted", status="canceled", created=start + 1)).json()[
        "outcome"] == "deleting tenant"
    wait_for(lambda: web.store.get_tenant("acme") is None, what="acme's record to go")
    again = web.webhook(subscription_event("evt_o3", subscription="sub_2", created=start + 2, metadata=NAME))
    assert again.status_code == 200 and again.json()["tenant"] == "acme", again.text
    web.wait_running("acme")


# -- issue 10: check, apply and record in one transaction, the subscription's row locked -------------------

class _ObservedLock:
    """The store's in-process writer lock, telling which threads wait for it because another holds it
    (SQLite's writers queue there before BEGIN IMMEDIATE)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.waiting: set[str] = set()
        self._guard = threading.Lock()

    def __enter__(self) -> None:
        if self.inner.acquire(blocking=False):
            return
        with self._guard:
            self.waiting.add(threading.current_thread().name)
        self.inner.acquire()
        with self._guard:
            self.waiting.discard(threading.current_thread().name)

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


class _Interleaving:
    """Runs two billing events at once, the first paused in its check-apply window (after its check, before
    its write: where it builds the tenant) until the second has finished or is seen waiting for the first's
    lock. Without a lock the second runs its whole check and write inside the first's window."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = store
        self.handler = BillingWebhook(store, Access(store), WebConfig(webhook_secrets=(WEBHOOK_SECRET,)), time.time)
        self.second_done = threading.Event()
        self.in_window = threading.Event()
        if store.url.startswith("sqlite"):
            observed = _ObservedLock(store.dialect.write_lock())
            monkeypatch.setattr(store.dialect, "write_lock", lambda: observed)
            self._second_waits: Callable[[], bool] = lambda: "second" in observed.waiting
        else:
            self._second_waits = self._postgresql_waiter
        original = BillingWebhook._tenant

        def paused(*args: Any) -> Any:
            if threading.current_thread().name == "first":
                self.in_window.set()
                wait_for(lambda: self.second_done.is_set() or self._second_waits(),
                         what="the second event to finish or to wait for the first's lock")
            return original(*args)

        monkeypatch.setattr(BillingWebhook, "_tenant", staticmethod(paused))

    def _postgresql_waiter(self) -> bool:
        with psycopg.connect(self.store.url, autocommit=True) as pg:
            row = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND wait_event_type = 'Lock'").fetchone()
        return row is not None and row[0] > 0

    def deliver(self, event: dict[str, Any]) -> WebhookResult:
        payload = json.dumps(event).encode()
        return self.handler.handle(payload, sign(payload, WEBHOOK_SECRET, int(time.time())))

    def run(self, first: dict[str, Any], second: dict[str, Any]) -> list[WebhookResult | Exception]:
        results: list[WebhookResult | Exception] = [RuntimeError("not run"), RuntimeError("not run")]

        def deliver(index: int, event: dict[str, Any]) -> None:
            try:
                results[index] = self.deliver(event)
            except Exception as error:
                results[index] = error
            finally:
                if index == 1:
                    self.second_done.set()

        threads = [threading.Thread(target=deliver, args=(0, first), name="first"),
                   threading.Thread(target=deliver, args=(1, second), name="second")]
        threads[0].start()
        wait_for(self.in_window.is_set, what="the first event to reach its check-apply window")
        threads[1].start()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive(), f"{thread.name} is stuck"
        return results


def _plans(store: Store, *plans: tuple[str, str]) -> None:
    Access(store).apply_plans([Plan(id=plan_id, template="base", resources=Resources.model_validate({"memory": memory}))
                               for plan_id, memory in plans])


@pytest.mark.both_stores
def test_created_and_deleted_of_one_subscription_at_once_never_leave_the_tenant_alive(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plans(store, ("price_basic", "128Mi"))
    start = int(time.time()) - 100
    race = _Interleaving(store, monkeypatch)
    results = race.run(subscription_event("evt_c", created=start, metadata=NAME),
                       subscription_event("evt_d", "deleted", status="canceled", created=start + 1, metadata=NAME))
    assert all(isinstance(result, WebhookResult) for result in results), results
    acme = store.get_tenant("acme")
    assert acme is None or acme.metadata.deletion_requested_at is not None, "the tenant of a cancelled subscription"
    subscription = Access(store).subscription("sub_1")
    assert subscription is not None and subscription.deleted


@pytest.mark.both_stores
def test_two_concurrent_updates_leave_the_newer_plan_and_the_newest_event_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plans(store, ("price_basic", "128Mi"), ("price_big", "512Mi"))
    start = int(time.time()) - 100
    race = _Interleaving(store, monkeypatch)
    created = race.deliver(subscription_event("evt_c", created=start, metadata=NAME))
    assert created.outcome == "tenant created with plan price_basic"
    race.in_window.clear()
    results = race.run(subscription_event("evt_old", "updated", price="price_basic", created=start + 10),
                       subscription_event("evt_new", "updated", price="price_big", created=start + 20))
    assert all(isinstance(result, WebhookResult) for result in results), results
    acme = store.get_tenant("acme")
    assert acme is not None and acme.spec.resources.memory == 512 << 20
    subscription = Access(store).subscription("sub_1")
    assert subscription is not None and subscription.plan == "price_big"
    assert subscription.last_event_created == start + 20, "last_event_created moved backwards"


# -- issue 10: hostile signature headers and bodies ----------------------------------------------------------

def test_a_timestamp_in_another_scripts_digits_is_not_taken_for_the_number() -> None:
    """str.isdigit() and int() accept '١٢٣' (Arabic-Indic) and int() fails on '²': neither is Stripe's
    t=, and a signature made for t=123 must not pass for t=١٢٣."""
    good = sign(b"{}", WEBHOOK_SECRET, 123).split(",")[1]
    for timestamp in ("١٢٣", "²", "12³", "１２３"):
        with pytest.raises(ApiError) as refused:
            verify_signature(b"{}", f"t={timestamp},{good}", [WEBHOOK_SECRET], now=123)
        assert (refused.value.status, refused.value.field) == (400, "Stripe-Signature"), timestamp


def test_non_ascii_digits_and_non_hex_signatures_get_400_not_500(web: Web) -> None:
    web.plan("price_basic")
    payload = json.dumps(subscription_event("evt_h", metadata=NAME)).encode()
    now = int(time.time())
    good = sign(payload, WEBHOOK_SECRET, now).split(",")[1].removeprefix("v1=")
    headers = [
        "t=١٢٣".encode() + b",v1=" + good.encode(),            # UTF-8 Arabic-Indic digits
        b"t=\xb2,v1=" + good.encode(),                          # latin-1 superscript two: isdigit(), not int()
        f"t={now},v1=".encode() + b"\xff" * 64,                 # non-hex, non-ASCII signature bytes
        f"t={now},v1=".encode() + "é".encode() * 32,            # UTF-8 text where hex belongs
        f"t={now},v1={'z' * 64}".encode(),                      # ASCII, not hex
    ]
    for header in headers:
        head = ("POST /api/v1/webhooks/billing HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n").encode() + b"Stripe-Signature: " + header + b"\r\n\r\n"
        status, _headers, body = raw_request(web.api, head.decode("latin-1"), [payload])
        assert status == 400, (header, status, body)
        assert json.loads(body)["error"]["field"] == "Stripe-Signature"
    assert web.store.list_tenants().items == [] and web.access.webhook_events() == []
    assert web.webhook(json.loads(payload)).status_code == 200  # and the honest delivery still gets in


def test_the_webhook_answers_a_body_declared_over_the_limit_without_reading_any_of_it(web: Web) -> None:
    head = ("POST /api/v1/webhooks/billing HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: t={int(time.time())},v1={'0' * 64}\r\nContent-Length: {(1 << 20) + 1}\r\n\r\n")
    status, headers, body = raw_request(web.api, head)  # no body is sent: a read of it would wait forever
    assert status == 413, body
    assert json.loads(body)["error"]["field"] == "body" and headers.get("connection") == "close"
    assert web.access.webhook_events() == []
