"""The gateway as a customer's browser meets it: a claim link, a cookie, their own container only."""

import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from reconciler.web.claims import ClaimSigner
from state.access import Role
from tests.web.conftest import BASE_DOMAIN, Web


def _tenant(web: Web, name: str, **spec: object) -> None:
    with web.client(Role.BILLING) as client:
        response = client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": name},
                                                        "spec": {"template": "base", **spec}})
        assert response.status_code == 201, response.text


def _serving(web: Web, name: str) -> None:
    """A Running tenant whose container is a test HTTP server on its address (ingress = that port)."""
    _tenant(web, name)
    web.wait_running(name)
    port = web.serve_page(name)
    with web.client() as client:
        assert client.patch(f"/api/v1/tenants/{name}", json={"spec": {"network": {"ingress": [port]}}}).is_success
    web.wait_running(name)


def _authorize(web: Web, name: str) -> dict[str, str]:
    with web.client(Role.BILLING) as client:
        response = client.post(f"/api/v1/tenants/{name}/authorize")
        assert response.status_code == 200, response.text
        result: dict[str, str] = response.json()
        return result


def _visit(web: Web, name: str, url: str) -> httpx.Response:
    """Follow the claim link as a browser would: the redirect sets the cookie, the page comes next."""
    path = url.split(f"{name}.{BASE_DOMAIN}:", 1)[1].split("/", 1)[1]
    with web.gateway_client(name) as browser:
        first = browser.get("/" + path)
        assert first.status_code == 303, first.text
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Domain" not in cookie and "fleet_claim=" in cookie
        assert first.headers["location"] == "/"
        return browser.get(first.headers["location"])


def test_a_claim_link_lets_the_customer_into_their_container_and_the_claim_is_not_forwarded(web: Web) -> None:
    _serving(web, "acme")
    claim = _authorize(web, "acme")
    assert claim["url"].startswith(f"http://acme.{BASE_DOMAIN}:{web.gateway.rsplit(':', 1)[1]}/?fleet_claim=")
    page = _visit(web, "acme", claim["url"])
    assert page.status_code == 200, page.text
    assert page.json()["page"] == "hello from acme"
    assert page.json()["cookie"] is None and page.json()["host"] == f"acme.{BASE_DOMAIN}"
    with web.gateway_client("acme") as browser:
        browser.cookies.set("fleet_claim", claim["claim"])
        echoed = browser.post("/upload", content=b"x" * 16 * 65536)  # arrives and leaves in chunks
        assert echoed.status_code == 200 and len(echoed.content) == 16 * 65536


def test_without_a_claim_401_with_another_tenants_claim_403_and_bad_claims_401(web: Web) -> None:
    _serving(web, "acme")
    _serving(web, "other")
    other_claim = _authorize(web, "other")["claim"]
    good = _authorize(web, "acme")["claim"]
    expired = ClaimSigner(web.access, clock=lambda: time.time() - 7200).mint("acme").token
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    cases = [(None, 401, "Sign in required"), (other_claim, 403, "another tenant"), (expired, 401, "expired"),
             (tampered, 401, "invalid"), ("not-a-jwt", 401, "not a valid token")]
    for token, status, text in cases:
        with web.gateway_client("acme") as browser:
            if token is not None:
                browser.cookies.set("fleet_claim", token)
            response = browser.get("/")
            assert response.status_code == status and text in response.text, (token, response.text)
    with web.gateway_client("acme") as browser:
        browser.cookies.set("fleet_claim", good)
        assert browser.get("/").status_code == 200


def test_rotating_keys_keeps_issued_claims_and_revoking_a_key_refuses_its_claims(web: Web) -> None:
    _serving(web, "acme")
    before = _authorize(web, "acme")["claim"]
    old_kid = web.access.active_signing_key().kid
    web.access.rotate_signing_key()
    after = _authorize(web, "acme")["claim"]

    def status(token: str) -> int:
        with web.gateway_client("acme") as browser:
            browser.cookies.set("fleet_claim", token)
            return browser.get("/").status_code

    assert status(before) == 200 and status(after) == 200
    web.access.revoke_signing_key(old_kid)
    web.context.signer._loaded_at = float("-inf")  # the cache would refuse it within a second anyway
    assert status(before) == 401 and status(after) == 200


def test_a_tenant_that_is_not_running_gets_a_clear_503(web: Web) -> None:
    _tenant(web, "sleepy", paused=True)
    claim = _authorize(web, "sleepy")["claim"]
    with web.gateway_client("sleepy") as browser:
        browser.cookies.set("fleet_claim", claim)
        response = browser.get("/")
    assert response.status_code == 503 and "not Running" in response.text and response.headers["retry-after"]


def test_an_unknown_host_is_404(web: Web) -> None:
    with httpx.Client(base_url=web.gateway, headers={"host": "example.org"}) as client:
        assert client.get("/").status_code == 404


def test_websockets_are_relayed_to_the_container(web: Web) -> None:
    from websockets.sync.server import serve

    _tenant(web, "sockets")
    web.wait_running("sockets")
    address = web.store.get_tenant("sockets").status.address  # type: ignore[union-attr]

    def echo(connection: object) -> None:
        for message in connection:  # type: ignore[attr-defined]
            connection.send(f"echo {message}")  # type: ignore[attr-defined]

    server = serve(echo, str(address), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.socket.getsockname()[1]
        with web.client() as client:
            assert client.patch("/api/v1/tenants/sockets", json={"spec": {"network": {"ingress": [port]}}}).is_success
        web.wait_running("sockets")
        claim = _authorize(web, "sockets")["claim"]
        host, gateway_port = web.gateway.removeprefix("http://").split(":")
        url = f"ws://sockets.{BASE_DOMAIN}:{gateway_port}/ws"  # the name, dialled at the gateway's address
        with connect(url, sock=socket.create_connection((host, int(gateway_port))),
                     additional_headers={"cookie": f"fleet_claim={claim}"}) as websocket:
            websocket.send("hi")
            assert websocket.recv(timeout=5) == "echo hi"
        with pytest.raises(InvalidStatus), connect(url, sock=socket.create_connection((host, int(gateway_port)))):
            pass
    finally:
        server.shutdown()
