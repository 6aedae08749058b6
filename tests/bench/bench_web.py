"""The HTTP doors: API write throughput (SQLite), gateway overhead vs a direct request, and
webhook-to-Running with the real driver.

Run: .venv/bin/python -m tests.bench.bench_web [--creates 2000] [--requests 2000] [--signups 20]
The webhook part needs root and the nspawn host (skipped otherwise); it runs `fleet up --driver nspawn` on its
own loop-backed pool under /var/tmp/fleet-bench-web and removes everything afterwards."""

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx

from reconciler.controller import Controller, ControllerConfig
from reconciler.web.app import create_app
from reconciler.web.context import WebConfig, WebContext
from reconciler.web.gateway import create_gateway
from reconciler.web.server import BackgroundServer, Listen
from reconciler.web.webhooks import sign
from state import Store
from state.access import Access, Role
from tests.bench.report import write_section
from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.web.conftest import LoopbackFake, _Page

DATA = Path("/var/tmp/fleet-bench-web")
SECRET = "whsec_bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def api_throughput(creates: int, clients: int = 8) -> str:
    with tempfile.TemporaryDirectory() as directory:
        store = Store(f"sqlite:///{directory}/fleet.db")
        token = Access(store).create_token(name="bench", role=Role.BILLING)[1]
        server = BackgroundServer(create_app(WebContext(store)), Listen("127.0.0.1", 0), name="API").start()
        per_client = creates // clients
        failures: list[int] = []

        def run(index: int) -> None:
            with httpx.Client(base_url=f"http://{server.listen}", headers={"authorization": f"Bearer {token}"}) as c:
                for n in range(per_client):
                    response = c.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": f"t{index}-{n}"},
                                                               "spec": {"template": "base"}})
                    if response.status_code != 201:
                        failures.append(response.status_code)

        started = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - started
        server.stop()
        store.close()
    total = per_client * clients
    return (f"- API writes: {total} `POST /api/v1/tenants` from {clients} keep-alive clients in {took:.2f} s = "
            f"**{total / took:.0f} creates/s** (goal ≥ 500), {len(failures)} failures; SQLite WAL, uvicorn (h11), "
            "API process without a controller competing for the 2 cores.")


def gateway_overhead(requests: int) -> str:
    with tempfile.TemporaryDirectory() as directory:
        store = Store(f"sqlite:///{directory}/fleet.db")
        driver = LoopbackFake(node="n1")
        controller = Controller(store, driver, ControllerConfig(node="n1", base_domain="fleet.test"))
        controller.start()
        context = WebContext(store, WebConfig(base_domain="fleet.test"))
        gateway = BackgroundServer(create_gateway(context), Listen("127.0.0.1", 0), name="gateway").start()
        context.config = replace(context.config, public_port=gateway.listen.port)
        from specs import Tenant

        store.apply_tenant(Tenant.model_validate({"metadata": {"name": "bench"}, "spec": {"template": "base"}}))
        wait_for(lambda: (t := store.get_tenant("bench")) and t.status and t.status.address, what="an address")
        address = store.get_tenant("bench").status.address  # type: ignore[union-attr]
        backend = ThreadingHTTPServer((str(address), 0), _Page)
        backend.tenant = "bench"  # type: ignore[attr-defined]
        threading.Thread(target=backend.serve_forever, daemon=True).start()
        port = backend.server_address[1]
        store.apply_tenant(Tenant.model_validate({"metadata": {"name": "bench"}, "spec": {
            "template": "base", "network": {"ingress": [port]}}}))
        wait_for(lambda: (t := store.get_tenant("bench")) and t.status and t.status.phase.value == "Running"
                 and driver.inspect("bench").network.ingress == (port,), what="Running")  # type: ignore[union-attr]
        claim = context.signer.mint("bench").token

        def timed(client: httpx.Client) -> list[float]:
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                assert client.get("/").status_code == 200
                samples.append((time.perf_counter() - started) * 1000)
            return samples

        with httpx.Client(base_url=f"http://{address}:{port}") as direct_client:
            timed(direct_client)
            direct = timed(direct_client)
        with httpx.Client(base_url=f"http://{gateway.listen}", headers={"host": "bench.fleet.test"},
                          cookies={"fleet_claim": claim}) as via_client:
            timed(via_client)
            via = timed(via_client)
        gateway.stop()
        controller.stop()
        backend.shutdown()
        backend.server_close()
        store.close()
    added = statistics.median(via) - statistics.median(direct)
    return (f"- Gateway overhead: {requests} sequential keep-alive GETs of a small page. Direct p50 "
            f"{statistics.median(direct):.2f} ms / p99 {pct(direct, 0.99):.2f} ms; through the gateway (claim cookie "
            f"verified on every request) p50 {statistics.median(via):.2f} ms / p99 {pct(via, 0.99):.2f} ms: "
            f"**{added:.2f} ms added at p50** (goal < 2 ms).")


class _BenchFleet(Fleet):
    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "FLEET_WEBHOOK_SECRET": SECRET}


def webhook_to_running(signups: int) -> str:
    if os.geteuid() != 0:
        return "- Webhook-to-Running (nspawn): not measured, needs root."
    from drivers import nspawn_network
    from tests.integration.conftest import teardown_loop_pool

    shutil.rmtree(DATA, ignore_errors=True)
    fleet = _BenchFleet(data_dir=DATA)
    DATA.mkdir(parents=True)
    fleet.run("plan", "apply", "-f", "-", stdin="kind: Plan\nid: price_bench\ntemplate: base\n"
              "resources: {memory: 64Mi, cpu: 100m}\n")
    token = fleet.run("token", "create", "--name", "bench", "--role", "operator").stdout.strip()
    process = start_operator(fleet, "--driver", "nspawn", "--pool-size", "4Gi", "--address-range", "10.217.0.0/16",
                             "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0", "--log-level", "INFO")
    samples: list[float] = []
    try:
        line = next(line for line in fleet.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        auth = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api, headers=auth, timeout=10) as client:
            for n in range(signups):
                payload = json.dumps({"id": f"evt_b{n}", "type": "customer.subscription.created",
                                      "created": int(time.time()), "data": {"object": {
                                          "id": f"sub_b{n}", "customer": f"cus_b{n}", "metadata": {
                                              "fleet_tenant": f"bench{n}"},
                                          "items": {"data": [{"price": {"id": "price_bench"}}]}}}}).encode()
                started = time.perf_counter()
                response = client.post("/api/v1/webhooks/billing", content=payload,
                                       headers={"stripe-signature": sign(payload, SECRET, int(time.time()))})
                assert response.status_code == 200, response.text
                wait_for(lambda n=n: (client.get(f"/api/v1/tenants/bench{n}").json().get("status") or {})  # type: ignore[misc]
                         .get("phase") == "Running", timeout=30, interval=0.005, what=f"bench{n} Running")
                samples.append((time.perf_counter() - started) * 1000)
            for n in range(signups):
                client.delete(f"/api/v1/tenants/bench{n}")
            wait_for(lambda: client.get("/api/v1/tenants").json()["items"] == [], timeout=120, what="all deleted")
    finally:
        stop_operator(fleet, process)
        nspawn_network.Firewall().remove_table_if_unused()
        teardown_loop_pool(DATA)
        shutil.rmtree(DATA, ignore_errors=True)
    return (f"- Webhook-to-Running (real nspawn driver, busybox template, {signups} signups one after another, "
            f"signed webhook POST until the API reports Running): **p50 {statistics.median(samples):.0f} ms, "
            f"p99 {pct(samples, 0.99):.0f} ms** (goal p50 < 400 ms, p99 < 1.5 s); min {min(samples):.0f} ms, "
            f"max {max(samples):.0f} ms.")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--signups", type=int, default=20)
    args = parser.parse_args()
    lines = [api_throughput(args.creates), gateway_overhead(args.requests), webhook_to_running(args.signups)]
    for line in lines:
        print(line)
    write_section("HTTP API, gateway and billing webhook", "sudo .venv/bin/python -m tests.bench.bench_web",
                  "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
