"""The billing signup as a customer goes through it, on whichever real driver `fleet up` runs: a signed
`customer.subscription.created` webhook -> the tenant Running -> authorize -> the customer's first GET
through the gateway returns their container's page; the cancellation removes everything. Shared by the
nspawn and LXD versions of the test, which differ only in the node they start and what the receipt names."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from reconciler.web.webhooks import sign
from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for

SECRET = "whsec_signup_flow"
TENANT = "signup"
PLAN = "kind: Plan\nid: price_flow\ntemplate: base\nresources: {memory: 128Mi, cpu: 250m}\n"


class BillingFleet(Fleet):
    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "FLEET_WEBHOOK_SECRET": SECRET}


@dataclass(frozen=True)
class Site:
    """A running `fleet up` as the billing system and the customer's browser reach it."""

    api: str
    gateway: str
    auth: dict[str, str]

    def status(self, tenant: str = TENANT) -> httpx.Response:
        return httpx.get(f"{self.api}/api/v1/tenants/{tenant}", headers=self.auth)

    def phase(self, tenant: str = TENANT) -> str | None:
        phase = (self.status(tenant).json().get("status") or {}).get("phase")
        return None if phase is None else str(phase)


@dataclass(frozen=True)
class Signup:
    running_seconds: float  # webhook sent -> the API says Running
    first_byte_seconds: float  # webhook sent -> the container's page through the gateway
    claim: str
    host: dict[str, str]
    page: str


def event(event_id: str, kind: str) -> bytes:
    return json.dumps({
        "id": event_id, "type": f"customer.subscription.{kind}", "created": int(time.time()),
        "data": {"object": {"id": "sub_flow", "customer": "cus_Flow", "status": "active",
                            "metadata": {"fleet_tenant": TENANT},
                            "items": {"data": [{"price": {"id": "price_flow", "product": "prod_flow"}}]}}},
    }).encode()


def post_webhook(site: Site, payload: bytes) -> httpx.Response:
    return httpx.post(f"{site.api}/api/v1/webhooks/billing", content=payload, timeout=10,
                      headers={"stripe-signature": sign(payload, SECRET, int(time.time())),
                               "content-type": "application/json"})


@contextmanager
def billing_site(node: Fleet, *args: str) -> Iterator[Site]:
    """`fleet up ARGS` on `node`'s data directory with the plan, a billing token and the webhook secret."""
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.run("plan", "apply", "-f", "-", stdin=PLAN)
    token = node.run("token", "create", "--name", "billing", "--role", "billing").stdout.strip()
    billing = BillingFleet(data_dir=node.data_dir)
    process = start_operator(billing, *args, "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0")
    try:
        line = next(line for line in billing.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        gateway = re.search(r"gateway: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        yield Site(api=api, gateway=gateway, auth={"authorization": f"Bearer {token}"})
    finally:
        stop_operator(billing, process)


def sign_up(site: Site, *, running_within: float = 10) -> Signup:
    """The customer signs up and opens their page; a replayed webhook changes nothing."""
    started = time.monotonic()
    assert post_webhook(site, event("evt_flow_created", "created")).status_code == 200
    wait_for(lambda: site.phase() == "Running", timeout=running_within, interval=0.01,
             what=f"{TENANT} to be Running")
    running = time.monotonic() - started
    claim = httpx.post(f"{site.api}/api/v1/tenants/{TENANT}/authorize", headers=site.auth).json()
    path = "/" + claim["url"].split("/", 3)[3]
    host = {"host": f"{TENANT}.fleet.localhost:{site.gateway.rsplit(':', 1)[1]}"}
    with httpx.Client(base_url=site.gateway, headers=host, timeout=5) as browser:
        signed_in = browser.get(path)
        assert signed_in.status_code == 303 and "HttpOnly" in signed_in.headers["set-cookie"]
        page = wait_for(lambda: _ok(browser.get("/")), timeout=5, what="the container's page through the gateway")
        assert page is not None
    first_byte = time.monotonic() - started
    assert TENANT in page.text, page.text
    print(f"signup-to-Running {running * 1000:.0f} ms, signup-to-first-byte {first_byte * 1000:.0f} ms")

    replay = post_webhook(site, event("evt_flow_created", "created"))
    assert replay.json()["replayed"] is True
    listed = httpx.get(f"{site.api}/api/v1/tenants", headers=site.auth).json()["items"]
    assert [t["metadata"]["name"] for t in listed] == [TENANT]
    return Signup(running_seconds=running, first_byte_seconds=first_byte, claim=claim["claim"], host=host,
                  page=page.text)


def _ok(response: httpx.Response) -> httpx.Response | None:
    return response if response.status_code == 200 else None


def cancel(site: Site, signup: Signup, *, gone_within: float = 30) -> dict[str, Any]:
    """The subscription ends: the tenant is deleted and finalized, the gateway forgets it; the Deleted event."""
    assert post_webhook(site, event("evt_flow_deleted", "deleted")).json()["outcome"] == "deleting tenant"
    wait_for(lambda: site.status().status_code == 404, timeout=gone_within, what="the tenant to be deleted")
    events = httpx.get(f"{site.api}/api/v1/tenants/{TENANT}/events", headers=site.auth).json()
    deleted: dict[str, Any] = next(e for e in events if e["reason"] == "Deleted")
    assert events[-1]["reason"] == "Finalized"
    with httpx.Client(base_url=site.gateway, headers=signup.host, timeout=5) as browser:
        browser.cookies.set("fleet_claim", signup.claim)
        wait_for(lambda: browser.get("/").status_code == 404, timeout=5, what="the gateway to forget it")
    return deleted
