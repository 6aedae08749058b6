"""The HTTP doors: API write throughput (SQLite), gateway overhead vs a direct request, and
webhook-to-Running with the real driver.

Run: .venv/bin/python -m tests.bench.bench_web [--creates 2000] [--requests 2000] [--signups 20]
     [--parts api,api-apart,gateway,webhook]  (the parts not run keep their numbers in docs/benchmarks.md)
The webhook part needs root and the nspawn host (skipped otherwise); it runs `fleet up --driver nspawn` on its
own loop-backed pool under /var/tmp/fleet-bench-web and removes everything afterwards."""

import argparse
import json
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
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
from tests.bench.report import DOC, write_section
from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.web.conftest import LoopbackFake, _Page

DATA = Path("/var/tmp/fleet-bench-web")
SECRET = "whsec_bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _create_from_clients(base: str, token: str, clients: int, per_client: int) -> tuple[int, list[int], float]:
    """`clients` keep-alive HTTP clients at once, each creating `per_client` distinct tenants. Returns the
    201s, the other status codes, and the seconds from the first request to the last answer."""
    created: list[int] = []
    failures: list[int] = []

    def run(index: int) -> None:
        done = 0
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}) as client:
            for n in range(per_client):
                response = client.post("/api/v1/tenants", json={
                    "kind": "Tenant", "metadata": {"name": f"t{index}-{n}"}, "spec": {"template": "base"}})
                if response.status_code == 201:
                    done += 1
                else:
                    failures.append(response.status_code)
        created.append(done)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(created), failures, time.perf_counter() - started


def api_throughput(creates: int, clients: int = 8, *, separate_process: bool = False) -> str:
    """Tenant creates over real HTTP on loopback against the API on SQLite; only 201s count, and every one
    must be a stored tenant. The clients run in the API's process (they then share its interpreter lock)
    or, as a billing system would, in a process of their own."""
    with tempfile.TemporaryDirectory() as directory:
        store = Store(f"sqlite:///{directory}/fleet.db")
        token = Access(store).create_token(name="bench", role=Role.BILLING)[1]
        server = BackgroundServer(create_app(WebContext(store)), Listen("127.0.0.1", 0), name="API").start()
        arguments = (f"http://{server.listen}", token, clients, creates // clients)
        if separate_process:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                total, failures, took = pool.submit(_create_from_clients, *arguments).result()
        else:
            total, failures, took = _create_from_clients(*arguments)
        stored = len(store.list_tenants().items)
        server.stop()
        store.close()
    assert stored == total, f"{total} creates answered 201 but {stored} tenants are stored"
    where = "in a process of their own" if separate_process else "in the API's process (sharing its GIL)"
    return (f"- API writes, clients {where}: {total} `POST /api/v1/tenants` answered 201 (each a distinct tenant) "
            f"from {clients} keep-alive clients in {took:.2f} s = **{total / took:.0f} creates/s** (goal ≥ 500), "
            f"{len(failures)} failures; SQLite WAL, uvicorn (httptools, uvloop), no controller competing for the "
            "2 cores.")


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
        identity = store.desired("bench").created_revision  # type: ignore[union-attr]
        claim = context.signer.mint("bench", created_revision=identity).token  # type: ignore[arg-type]

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
    from drivers import nspawn_firewall
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
        nspawn_firewall.Firewall().remove_table_if_unused()
        teardown_loop_pool(DATA)
        shutil.rmtree(DATA, ignore_errors=True)
    return (f"- Webhook-to-Running (real nspawn driver, busybox template, {signups} signups one after another, "
            f"signed webhook POST until the API reports Running): **p50 {statistics.median(samples):.0f} ms, "
            f"p99 {pct(samples, 0.99):.0f} ms** (goal p50 < 400 ms, p99 < 1.5 s); min {min(samples):.0f} ms, "
            f"max {max(samples):.0f} ms.")


PARTS = {"api": "- API writes, clients in the API", "api-apart": "- API writes, clients in a process",
         "gateway": "- Gateway overhead", "webhook": "- Webhook-to-Running"}


def _previous_lines() -> dict[str, str]:
    """The lines of the parts in docs/benchmarks.md now, so running some parts keeps the others' numbers."""
    text = DOC.read_text() if DOC.exists() else ""
    return {part: line for line in text.splitlines() for part, prefix in PARTS.items() if line.startswith(prefix)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--signups", type=int, default=20)
    parser.add_argument("--parts", default=",".join(PARTS), help="Which to measure (the others keep their lines)")
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    measure = {"api": lambda: api_throughput(args.creates),
               "api-apart": lambda: api_throughput(args.creates, separate_process=True),
               "gateway": lambda: gateway_overhead(args.requests), "webhook": lambda: webhook_to_running(args.signups)}
    previous = _previous_lines()
    kept = " (from an earlier run of this benchmark)"
    lines = [measure[part]() if part in parts else
             previous[part].removesuffix(kept) + kept if part in previous else f"{PARTS[part]}: not measured."
             for part in PARTS]
    for line in lines:
        print(line)
    note = ("\nWhat a create costs: the token check is remembered for a second; concurrent creates are queued by the "
            "event loop and written by one thread, all queued at once, in one transaction (group commit: one query "
            "for the checks, one insert, one read-back); SQLite writers queue on an in-process lock instead of its "
            "busy handler's sleeps. Before these (h11, asyncio, one transaction and five round trips per create) "
            "the same command measured 201-294 creates/s.")
    write_section("HTTP API, gateway and billing webhook", "sudo .venv/bin/python -m tests.bench.bench_web",
                  "\n".join(lines) + "\n" + note)


if __name__ == "__main__":
    sys.exit(main())
