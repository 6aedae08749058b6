"""A real Fleet on loopback: SQLite file, controller on a fake driver whose tenants get 127.0.0.N addresses,
and the API and the gateway on uvicorn with ephemeral ports. Tenants' "containers" are small HTTP or
websocket servers the test starts on their address; everything is stopped afterwards."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.fake import FakeDriver
from reconciler.controller import Controller, ControllerConfig
from reconciler.web.app import create_app
from reconciler.web.context import GatewayLimits, WebConfig, WebContext
from reconciler.web.gateway import Gateway, create_gateway
from reconciler.web.server import BackgroundServer, Listen
from reconciler.web.webhooks import sign
from state import Store
from state.access import Access, Role
from tests.helpers import wait_for

BASE_DOMAIN = "fleet.test"
WEBHOOK_SECRET = "whsec_test_current"
OLD_WEBHOOK_SECRET = "whsec_test_previous"


class LoopbackFake(FakeDriver):
    """The fake driver, but tenants' addresses are on loopback, so a test server can play the container."""

    def _lease(self, tenant: str) -> str:
        existing = self._lease_of.get(tenant)
        if existing is not None:
            return existing
        index = len(self.leases)
        while f"127.0.{(index >> 8) & 255}.{(index & 255) + 2}" in self.leases:
            index += 1
        address = f"127.0.{(index >> 8) & 255}.{(index & 255) + 2}"
        self.leases[address] = tenant
        self._lease_of[tenant] = address
        return address


class _Page(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        body = json.dumps({"page": f"hello from {self.server.tenant}", "path": self.path,  # type: ignore[attr-defined]
                           "cookie": self.headers.get("cookie"), "host": self.headers.get("host")}).encode()
        # A container that tries to set cookies for its sibling tenants (they share the base domain).
        self._send(body, [f"sibling=1; Path=/; Domain={BASE_DOMAIN}", f"other=2; domain=.{BASE_DOMAIN} ; HttpOnly"]
                   if self.path.split("?")[0] == "/cookies" else [])

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        self._send(self.rfile.read(length))

    def _send(self, body: bytes, cookies: list[str] | None = None) -> None:
        self.send_response(200)
        for cookie in cookies or []:
            self.send_header("set-cookie", cookie)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Web:
    api: str
    gateway: str
    store: Store
    access: Access
    driver: LoopbackFake
    context: WebContext
    tokens: dict[Role, str]
    servers: list[Any] = field(default_factory=list)
    gateways: list[BackgroundServer] = field(default_factory=list)

    def client(self, role: Role | None = Role.OPERATOR) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.api, headers=headers, timeout=10)

    def gateway_client(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.gateway, headers={"host": f"{tenant}.{BASE_DOMAIN}"}, timeout=10)

    def plan(self, plan_id: str = "price_basic", **resources: Any) -> None:
        with self.client() as client:
            response = client.put(f"/api/v1/plans/{plan_id}",
                                  json={"id": plan_id, "template": "base", "resources": resources})
            assert response.status_code == 200, response.text

    def webhook(self, event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None,
                signature: str | None = None) -> httpx.Response:
        payload = json.dumps(event).encode()
        header = signature or sign(payload, secret, int(time.time()) if timestamp is None else timestamp)
        with httpx.Client(base_url=self.api, timeout=10) as client:
            return client.post("/api/v1/webhooks/billing", content=payload,
                               headers={"stripe-signature": header, "content-type": "application/json"})

    def phase(self, name: str) -> str | None:
        tenant = self.store.get_tenant(name)
        return None if tenant is None or tenant.status is None else tenant.status.phase.value

    def wait_running(self, name: str, timeout: float = 10) -> None:
        wait_for(lambda: self.phase(name) == "Running", timeout=timeout, what=f"{name} to be Running")

    def start_gateway(self, limits: GatewayLimits) -> tuple[Gateway, str]:
        """Another gateway on the same store, with these limits: the app and its http://HOST:PORT."""
        context = WebContext(self.store, replace(self.context.config, gateway=limits))
        app = create_gateway(context)
        server = BackgroundServer(app, Listen("127.0.0.1", 0), name="gateway").start()
        context.config = replace(context.config, public_port=server.listen.port)
        self.gateways.append(server)
        return app, f"http://{server.listen}"

    def serve_page(self, tenant: str) -> int:
        """Play the tenant's container: an HTTP server on its address. Returns its port."""
        address = wait_for(lambda: (t := self.store.get_tenant(tenant)) and t.status and t.status.address,
                           what=f"{tenant}'s address")
        server = ThreadingHTTPServer((str(address), 0), _Page)
        server.tenant = tenant  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return int(server.server_address[1])


def subscription_event(event_id: str, kind: str = "created", *, customer: str = "cus_Acme1",
                       subscription: str = "sub_1", price: str = "price_basic", created: int | None = None,
                       status: str = "active", metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": event_id, "object": "event", "type": f"customer.subscription.{kind}",
        "created": int(time.time()) if created is None else created,
        "data": {"object": {"id": subscription, "object": "subscription", "customer": customer, "status": status,
                            "metadata": metadata or {},
                            "items": {"data": [{"price": {"id": price, "product": "prod_sandbox"}}]}}},
    }


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    driver = LoopbackFake(node="n1")
    controller = Controller(store, driver, ControllerConfig(node="n1", resync_seconds=60, base_domain=BASE_DOMAIN,
                                                            poll_seconds=0.01))
    context = WebContext(store, WebConfig(base_domain=BASE_DOMAIN,
                                          webhook_secrets=(WEBHOOK_SECRET, OLD_WEBHOOK_SECRET)))
    # The API's own Access, as in `fleet up`: a revocation through it takes effect at once (one from
    # another process, within the token cache's second: see test_api).
    access = context.access
    tokens = {role: access.create_token(name=f"t-{role.value}", role=role)[1] for role in Role}
    controller.start()
    gateway = BackgroundServer(create_gateway(context), Listen("127.0.0.1", 0), name="gateway").start()
    context.config = replace(context.config, public_port=gateway.listen.port)
    api = BackgroundServer(create_app(context), Listen("127.0.0.1", 0), name="API").start()
    web = Web(f"http://{api.listen}", f"http://{gateway.listen}", store, access, driver, context, tokens)
    try:
        yield web
    finally:
        api.stop()
        gateway.stop()
        for extra in web.gateways:
            extra.stop()
        controller.stop()
        for server in web.servers:
            server.shutdown()
            server.server_close()
        store.close()
