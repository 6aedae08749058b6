"""The billing webhook as Stripe calls it: signed deliveries, replays, out-of-order events, bad input."""

import time

from tests.helpers import wait_for
from tests.web.conftest import OLD_WEBHOOK_SECRET, Web, subscription_event

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
