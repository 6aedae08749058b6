"""The product's promise, on the real driver: a signed signup webhook -> a Running nspawn container ->
authorize -> the customer's first GET through the gateway returns their container's page; the
cancellation removes everything. `fleet up` as a user runs it (root only; skipped with the reason)."""

import json
import re
import time

import httpx
import pytest

from reconciler.web.webhooks import sign
from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.integration.test_fleet_nspawn import ARGS, _unavailable
from tests.integration.test_fleet_nspawn import node as node  # the fixture: a swept data dir, swept again after

pytestmark = [pytest.mark.root, pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]
SECRET = "whsec_signup_flow"


class BillingFleet(Fleet):
    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "FLEET_WEBHOOK_SECRET": SECRET}


def _event(event_id: str, kind: str) -> bytes:
    return json.dumps({
        "id": event_id, "type": f"customer.subscription.{kind}", "created": int(time.time()),
        "data": {"object": {"id": "sub_flow", "customer": "cus_Flow", "status": "active",
                            "metadata": {"fleet_tenant": "signup"},
                            "items": {"data": [{"price": {"id": "price_flow", "product": "prod_flow"}}]}}},
    }).encode()


def _post_webhook(api: str, payload: bytes) -> httpx.Response:
    return httpx.post(f"{api}/api/v1/webhooks/billing", content=payload, timeout=10,
                      headers={"stripe-signature": sign(payload, SECRET, int(time.time())),
                               "content-type": "application/json"})


def test_signup_webhook_to_the_containers_page_through_the_gateway_then_cancel(node: Fleet) -> None:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.run("plan", "apply", "-f", "-", stdin="kind: Plan\nid: price_flow\ntemplate: base\n"
             "resources: {memory: 128Mi, cpu: 250m}\n")
    token = node.run("token", "create", "--name", "billing", "--role", "billing").stdout.strip()
    billing = BillingFleet(data_dir=node.data_dir)
    process = start_operator(billing, *ARGS, "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0")
    try:
        line = next(line for line in billing.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        gateway = re.search(r"gateway: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        auth = {"authorization": f"Bearer {token}"}

        started = time.monotonic()
        assert _post_webhook(api, _event("evt_flow_created", "created")).status_code == 200
        wait_for(lambda: (httpx.get(f"{api}/api/v1/tenants/signup", headers=auth).json().get("status") or {})
                 .get("phase") == "Running", timeout=10, interval=0.01, what="signup to be Running")
        running = time.monotonic() - started
        claim = httpx.post(f"{api}/api/v1/tenants/signup/authorize", headers=auth).json()
        path = "/" + claim["url"].split("/", 3)[3]
        host = {"host": f"signup.fleet.localhost:{gateway.rsplit(':', 1)[1]}"}
        with httpx.Client(base_url=gateway, headers=host, timeout=5) as browser:
            signed_in = browser.get(path)
            assert signed_in.status_code == 303 and "HttpOnly" in signed_in.headers["set-cookie"]
            page = wait_for(lambda: (r := browser.get("/")).status_code == 200 and r, timeout=5,
                            what="the container's page through the gateway")
        first_byte = time.monotonic() - started
        assert "signup" in page.text, page.text
        print(f"signup-to-Running {running * 1000:.0f} ms, signup-to-first-byte {first_byte * 1000:.0f} ms")
        assert first_byte < 5

        replay = _post_webhook(api, _event("evt_flow_created", "created"))
        assert replay.json()["replayed"] is True
        assert [t["metadata"]["name"] for t in httpx.get(f"{api}/api/v1/tenants", headers=auth).json()["items"]] == [
            "signup"]

        assert _post_webhook(api, _event("evt_flow_deleted", "deleted")).json()["outcome"] == "deleting tenant"
        wait_for(lambda: httpx.get(f"{api}/api/v1/tenants/signup", headers=auth).status_code == 404, timeout=30,
                 what="the tenant to be deleted")
        events = httpx.get(f"{api}/api/v1/tenants/signup/events", headers=auth).json()
        deleted = next(e for e in events if e["reason"] == "Deleted")
        assert any("subvolume" in item for item in deleted["details"]["removed"]), deleted
        assert events[-1]["reason"] == "Finalized"
        with httpx.Client(base_url=gateway, headers=host, timeout=5) as browser:
            browser.cookies.set("fleet_claim", claim["claim"])
            wait_for(lambda: browser.get("/").status_code == 404, timeout=5, what="the gateway to forget it")
    finally:
        stop_operator(billing, process)
