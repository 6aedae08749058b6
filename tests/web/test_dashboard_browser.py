"""The dashboard in a real headless browser: Debian's chromium driven by Playwright (`executable_path`, no
downloaded browser). A known fleet of three nodes shows its per-node counts; a signup raises its node's
count without a reload; a failing tenant's reason appears; hostile text stays text; a tenant's page follows
it to Running and to its delete receipt. Screenshots are kept under the test's temporary directory (CI
collects them as artifacts)."""

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.web.context import LocalUsage
from state.access import Role
from tests.helpers import tenant
from tests.web.conftest import Web, subscription_event
from tests.web.test_dashboard import HOSTILE, clones_fail, failed, place, register

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

CHROMIUM = os.environ.get("FLEET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this host (scripts/setup-host installs it)")
WAIT_MS = 10_000


@dataclass
class Browser:
    page: "playwright.Page"
    dialogs: list[str]  # what any alert(), confirm() or prompt() said: a script that ran would show here


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = chromium.new_page(viewport={"width": 1280, "height": 1600})
        page.set_default_timeout(WAIT_MS)
        opened = Browser(page, [])
        page.on("dialog", lambda dialog: (opened.dialogs.append(dialog.message), dialog.dismiss()))
        try:
            yield opened
        finally:
            page.screenshot(path=str(tmp_path / "dashboard-last.png"), full_page=True)
            chromium.close()


def _sign_in(page: "playwright.Page", web: Web) -> None:
    page.goto(f"{web.api}/")
    page.fill("#token", web.tokens[Role.VIEWER])
    page.click("button[type=submit]")
    playwright.expect(page.locator("#live")).to_be_visible()


def _count(page: "playwright.Page", node: str) -> "playwright.Locator":
    return page.locator(f'article.node[data-node="{node}"] .tenant-count')


def test_the_dashboard_in_a_browser_counts_per_node_follows_a_signup_and_shows_why_a_tenant_failed(
    web: Web, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    expect = playwright.expect
    register(web, "n2", ksm_pages_sharing=2560)
    register(web, "n3")
    place(web, "n2", [f"beta-{i}" for i in range(6)])
    place(web, "n3", [f"gamma-{i}" for i in range(3)])
    for i in range(4):
        web.store.create_tenant(tenant(f"alpha-{i}"))
    for i in range(4):
        web.wait_running(f"alpha-{i}")

    web.context.usage = LocalUsage("n1", web.driver.usage)
    _sign_in(page, web)
    expect(_count(page, "n1")).to_have_text("4")
    expect(_count(page, "n2")).to_have_text("6")
    expect(_count(page, "n3")).to_have_text("3")
    expect(page.locator("#total-tenants")).to_have_text("13")
    expect(page.locator("#ksm-saved")).to_have_text("10.0 MiB")
    expect(page.locator("#live-status")).to_have_text("live")
    page.evaluate("window.fleetNotReloaded = true")  # gone if the page reloads

    # A signup (the billing system's signed webhook): its node's count and the total rise on the open page.
    web.plan("price_basic")
    signup = web.webhook(subscription_event("evt_signup", price="price_basic", metadata={"fleet_tenant": "signup"}))
    assert signup.status_code == 200, signup.text
    expect(_count(page, "n1")).to_have_text("5")
    expect(page.locator("#total-tenants")).to_have_text("14")
    # ...and the ledger gets a line for its plan, with its usage read from n1's driver (as under `fleet up`).
    plan_cells = page.locator('#ledger tr[data-plan="price_basic"] td')
    expect(plan_cells.nth(1)).to_have_text("1")
    expect(plan_cells.nth(3)).to_have_text("1 of 1", timeout=20_000)  # usage is re-read 2 s after the last read

    # A tenant whose clone fails for good: it shows in Not Ready with the driver's reason, live.
    web.driver.faults = clones_fail("the pool is read-only")
    web.store.create_tenant(tenant("broken"))
    broken = page.locator('#not-ready tr[data-tenant="broken"]')
    expect(broken).to_contain_text("Failed")
    expect(broken).to_contain_text("the pool is read-only")

    # Hostile text in a reason is shown as text; nothing it says runs.
    place(web, "n3", ["victim"], failed("n3", HOSTILE, "see " + HOSTILE))
    victim = page.locator('#not-ready tr[data-tenant="victim"] .reason')
    expect(victim).to_have_text(HOSTILE)
    assert page.locator("#live script, #live img").count() == 0
    assert browser.dialogs == []
    assert page.evaluate("window.fleetNotReloaded") is True

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    # The tenant's own page, from its link; it too follows the stream: the failure fixed and the spec
    # changed (a spec change retries a Failed tenant), it turns Running; deleted, it shows the receipt.
    page.click('#not-ready tr[data-tenant="broken"] a')
    expect(page.locator("#phase")).to_have_text("Failed")
    expect(page.locator("#conditions")).to_contain_text("the pool is read-only")
    page.screenshot(path=str(tmp_path / "tenant.png"), full_page=True)
    page.evaluate("window.fleetNotReloaded = true")
    web.driver.faults.clear()
    with web.client(Role.BILLING) as client:
        assert client.patch("/api/v1/tenants/broken", json={"spec": {"resources": {"memory": "512Mi"}}}
                            ).status_code == 200
        expect(page.locator("#phase")).to_have_text("Running")
        assert client.delete("/api/v1/tenants/broken").status_code == 202
    expect(page.locator("#receipt")).to_contain_text("Removed and verified gone")
    assert page.evaluate("window.fleetNotReloaded") is True
    page.screenshot(path=str(tmp_path / "tenant-deleted.png"), full_page=True)

    # The search box.
    page.fill("input[name=q]", "gamma")
    page.press("input[name=q]", "Enter")
    expect(page.locator("#results tbody tr")).to_have_count(3)
    assert browser.dialogs == []
