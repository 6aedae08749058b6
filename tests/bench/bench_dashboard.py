"""The dashboard's first paint with 10,000 tenants: three registered nodes, every tenant bound with a status
(some Failed, with a reason), thousands of events, node prices; the API on uvicorn as `fleet api` serves
it, and Debian's chromium (Playwright, `executable_path`) opens `/dashboard/` signed in, N times in fresh
tabs. Reported: the browser's first-contentful-paint (from navigation start, so the server's work, the
transfer and the render), the server's time for the page and for one live-panel refresh, and the page's
size (it never carries more than a few dozen tenant rows). Goal: first paint under 1 s.

Run: .venv/bin/python -m tests.bench.bench_dashboard [--tenants N] [--runs N] [--no-write]
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from loguru import logger

from reconciler.web.app import create_app
from reconciler.web.context import WebContext
from reconciler.web.dashboard import COOKIE, read_view
from reconciler.web.dashboard_html import dashboard_page
from reconciler.web.server import BackgroundServer, Listen
from specs import Condition, ConditionStatus, DriverInfo, Event, NodeCapacity, Phase, TenantStatus
from state import Store
from state.access import Role
from state.ledger import NodeSettings
from state.nodes import Allocatable, NodeRegistration, NodeStore
from tests.bench.report import write_section

GIB = 1 << 30
NODES = ("node-a", "node-b", "node-c")
TITLE = "Dashboard first paint, 10,000 tenants"
GOAL_MS = 1000.0
# Chromium's first-contentful-paint and the page's first byte, both from navigation start (the page's CSP
# forbids eval, so a promise in `evaluate`, not `wait_for_function`).
PAINT = """() => new Promise((resolve) => new PerformanceObserver((entries, observer) => {
  const paint = entries.getEntriesByName("first-contentful-paint")[0];
  if (paint) {
    observer.disconnect();
    resolve([paint.startTime, performance.getEntriesByType("navigation")[0].responseStart]);
  }
}).observe({type: "paint", buffered: true}))"""


def build_fleet(store: Store, db: Path, tenants: int) -> None:
    """Three nodes, `tenants` tenants bound round-robin with Running statuses (one in 100 Failed), events."""
    nodes = NodeStore(store)
    for name in NODES:
        capacity = NodeCapacity(cpu_millicores=32_000, memory_bytes=128 * GIB, disk_bytes=2000 * GIB,
                                max_tenants=5000, ksm_pages_sharing=250_000)
        registration = NodeRegistration(name, {}, DriverInfo(name="nspawn"), capacity,
                                        Allocatable(3_200_000, 512 * GIB, 40_000 * GIB, 5000), ("base@1",))
        assert nodes.register(registration, holder=f"agent-{name}", ttl=3600.0)
    names = [f"tenant-{i:05d}" for i in range(tenants)]
    placed = {name: NODES[i % len(NODES)] for i, name in enumerate(names)}
    with sqlite3.connect(db) as conn:  # as a billing system may: one plain SQL transaction
        conn.executemany("INSERT INTO tenants (name, template, node) VALUES (?, 'base', ?)", placed.items())
    moment = datetime.now(UTC)
    statuses = []
    for i, name in enumerate(names):
        if i % 100 == 7:
            ready = Condition(type="Ready", status=ConditionStatus.FALSE, reason="CloneFailed",
                              message="could not clone from template base@1: no space left",
                              last_transition_time=moment)
            statuses.append((name, TenantStatus(phase=Phase.FAILED, node=placed[name], conditions=(ready,))))
        else:
            ready = Condition(type="Ready", status=ConditionStatus.TRUE, reason="Running", last_transition_time=moment)
            statuses.append((name, TenantStatus(phase=Phase.RUNNING, node=placed[name], conditions=(ready,),
                                                url=f"http://{name}.fleet.example/")))
    events = [Event(tenant=name, node=placed[name], reason="Running", message="running") for name in names]
    nodes.write_statuses(statuses, events, chunk=1000)
    prices = NodeSettings(store.session)
    for name, cents in zip(NODES, (45_000, 52_000, 38_000), strict=True):
        prices.set_monthly_price(name, cents)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logger.remove()
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("FLEET_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium: scripts/setup-host installs it")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "fleet.db"
        store = Store(f"sqlite:///{db}")
        started = time.perf_counter()
        build_fleet(store, db, args.tenants)
        built = time.perf_counter() - started
        context = WebContext(store)
        _, secret = context.access.create_token(name="bench-viewer", role=Role.VIEWER)
        cpu_ms = []  # the page's own work (queries and rendering) in CPU time: what load on the machine cannot inflate
        for _ in range(args.runs):
            t0 = time.process_time()
            dashboard_page(read_view(context))
            cpu_ms.append((time.process_time() - t0) * 1000)
        server = BackgroundServer(create_app(context), Listen("127.0.0.1", 0), name="API").start()
        base = f"http://{server.listen}"
        try:
            with httpx.Client(base_url=base, cookies={COOKIE: secret}, timeout=30) as client:
                page_ms, panel_ms = [], []
                size = 0
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    response = client.get("/dashboard/")
                    page_ms.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200 and 'id="live"' in response.text
                    size = len(response.content)
                    t0 = time.perf_counter()
                    assert client.get("/dashboard/panels").status_code == 200
                    panel_ms.append((time.perf_counter() - t0) * 1000)
                rows_shipped = response.text.count("<tr")
            paints: list[float] = []
            first_bytes: list[float] = []
            with sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=chromium, headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
                browser_context = browser.new_context()
                browser_context.add_cookies([{"name": COOKIE, "value": secret, "url": f"{base}/dashboard/"}])
                for _ in range(args.runs):
                    page = browser_context.new_page()
                    page.goto(f"{base}/dashboard/", wait_until="load")
                    paint, first_byte = page.evaluate(PAINT)
                    paints.append(paint)
                    first_bytes.append(first_byte)
                    assert page.locator("#total-tenants").inner_text() == f"{args.tenants}"
                    page.close()
                browser.close()
        finally:
            server.stop()
            store.close()
    paint_median, paint_worst = statistics.median(paints), max(paints)
    rows = [
        ("tenants (3 nodes, 1 in 100 Failed), events", f"{args.tenants:,}, {args.tenants:,}"),
        ("fleet built (SQL insert + statuses)", f"{built:.1f} s"),
        ("first contentful paint in chromium, median / worst of " + str(args.runs),
         f"{paint_median:.0f} ms / {paint_worst:.0f} ms (goal: < {GOAL_MS:.0f} ms)"),
        ("first byte of the page in chromium, median", f"{statistics.median(first_bytes):.0f} ms"),
        ("server: GET /dashboard/, median / worst", f"{statistics.median(page_ms):.0f} ms / {max(page_ms):.0f} ms"),
        ("the page's queries and rendering in CPU time, best / median", f"{min(cpu_ms):.0f} ms / "
         f"{statistics.median(cpu_ms):.0f} ms"),
        ("server: one live refresh (GET /dashboard/panels), median",
         f"{statistics.median(panel_ms):.0f} ms"),
        ("page size, table rows in it", f"{size / 1024:.0f} KiB, {rows_shipped} rows"),
    ]
    load = os.getloadavg()[0]
    rows.append(("load average (1 min) when done, on a machine shared with other work", f"{load:.1f}"))
    body = "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(body)
    if paint_worst >= GOAL_MS:
        print(f"over the goal: worst first paint {paint_worst:.0f} ms")
    if not args.no_write:
        write_section(
            TITLE, ".venv/bin/python -m tests.bench.bench_dashboard",
            body + "\n\nThe page's numbers are aggregates the database computes (counts per node and phase, "
            "resources requested per node); its lists are limited (20 tenants not Ready, Failed first; 15 "
            "recent events), so its size does not grow with the fleet. Each run opens a fresh tab with the "
            "viewer cookie already set; the time is chromium's first-contentful-paint from navigation start.",
        )


if __name__ == "__main__":
    main()
