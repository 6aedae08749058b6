"""`fleet up` serving the API and the gateway, and the token/plan/key verbs, as a user runs them."""

import re
import signal
import subprocess
import threading

import httpx

from tests.e2e.conftest import FLEET, Fleet, start_operator, stop_operator
from tests.helpers import wait_for


def test_fleet_up_serves_the_api_where_it_says_and_tokens_and_plans_work_from_the_cli(fleet: Fleet) -> None:
    fleet.data_dir.mkdir(parents=True)
    token = fleet.run("token", "create", "--name", "ops", "--role", "operator").stdout.strip()
    assert token.startswith("fleet_")
    assert "ops" in fleet.run("token", "list").stdout and token not in fleet.run("token", "list").stdout
    fleet.run("plan", "apply", "-f", "-", stdin="kind: Plan\nid: price_basic\ntemplate: base\n")
    assert "price_basic" in fleet.run("plan", "list").stdout
    process = start_operator(fleet, "--driver", "fake", "--api-listen", "127.0.0.1:0", "--gateway-listen",
                             "127.0.0.1:0")
    try:
        line = next(line for line in fleet.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        assert "gateway: http://127.0.0.1:" in line
        plans = httpx.get(f"{api}/api/v1/plans", headers={"authorization": f"Bearer {token}"}).json()
        assert [p["id"] for p in plans] == ["price_basic"]
        fleet.run("token", "revoke", "ops")
        # The API remembers a checked token for a second: a revocation from another process lands within it.
        wait_for(lambda: httpx.get(f"{api}/api/v1/plans", headers={"authorization": f"Bearer {token}"}).status_code
                 == 401, timeout=2.0, what="the revoked token to be refused")
    finally:
        stop_operator(fleet, process)


def test_bad_input_to_the_new_verbs_is_one_line_and_exit_2(fleet: Fleet) -> None:
    fleet.data_dir.mkdir(parents=True)
    cases = [
        (("token", "create", "--name", "x", "--role", "root"), "--role"),
        (("token", "create", "--name", "Bad_Name", "--role", "viewer"), "--name"),
        (("plan", "apply", "-f", "-"), "resources.memory"),
    ]
    stdins = [None, None, "kind: Plan\nid: price_x\ntemplate: base\nresources: {memory: 9Ti}\n"]
    for (args, _), stdin in zip(cases, stdins, strict=True):
        result = fleet.run(*args, stdin=stdin, check=False)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    unknown = fleet.run("plan", "apply", "-f", "-", stdin="kind: Plan\nid: price_y\ntemplate: nope\n", check=False)
    assert unknown.returncode == 2 and "template" in unknown.stderr
    assert fleet.run("key", "rotate").stdout.startswith("key/")


def test_behind_a_tls_proxy_tenant_urls_say_https_and_the_claim_cookie_is_secure(fleet: Fleet) -> None:
    """`fleet up` and `fleet gateway` with `--public-scheme https --public-port 443`: status.url and the
    authorize URL are the one customers open through the proxy, and the claim cookie is Secure."""
    fleet.data_dir.mkdir(parents=True)
    token = fleet.run("token", "create", "--name", "shop", "--role", "billing").stdout.strip()
    process = start_operator(fleet, "--driver", "fake", "--public-scheme", "https", "--public-port", "443")
    gateway = None
    try:
        line = next(line for line in fleet.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        gateways = [re.search(r"gateway: (http://[\d.]+:\d+)", line).group(1)]  # type: ignore[union-attr]
        with httpx.Client(base_url=api, headers={"authorization": f"Bearer {token}"}, timeout=10) as client:
            created = client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "acme"},
                                                           "spec": {"template": "base"}})
            assert created.status_code == 201, created.text
            status = wait_for(lambda: (s := client.get("/api/v1/tenants/acme").json().get("status")) and
                              s["phase"] == "Running" and s, what="acme Running")
            assert status["url"] == "https://acme.fleet.localhost/"
            link = client.post("/api/v1/tenants/acme/authorize").json()["url"]
        assert link.startswith("https://acme.fleet.localhost/?fleet_claim="), link
        gateway = subprocess.Popen([FLEET, "gateway", "--listen", "127.0.0.1:0", "--public-scheme", "https"],
                                   env=fleet.env, stderr=subprocess.PIPE, text=True)
        assert gateway.stderr is not None
        stderr, said = gateway.stderr, []
        threading.Thread(target=lambda: said.extend(iter(stderr.readline, "")), daemon=True).start()
        alone = wait_for(lambda: next((s for s in said if "Fleet gateway is up" in s), None) or gateway.poll(),
                         timeout=30, what="fleet gateway to start")
        assert gateway.poll() is None, "".join(said)
        gateways.append(re.search(r"gateway (http://[\d.]+:\d+)", alone).group(1))  # type: ignore[union-attr]
        for url in gateways:
            signed_in = httpx.get(url + link.removeprefix("https://acme.fleet.localhost"),
                                  headers={"host": "acme.fleet.localhost"})
            assert signed_in.status_code == 303, signed_in.text
            assert signed_in.headers["set-cookie"].endswith("; Secure"), signed_in.headers["set-cookie"]
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGINT)
            assert gateway.wait(timeout=30) == 0
        stop_operator(fleet, process)
