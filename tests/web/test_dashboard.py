"""The dashboard over HTTP, as a browser would use it but without one (tests/web/test_dashboard_browser.py
drives a real one): signing in, the cookie's scope, what the panels say about a known fleet, the ledger,
one tenant's page and its delete receipt, search, and hostile text shown as text."""

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape

import httpx
import pytest
from sqlalchemy import text

from drivers.fake import Faults
from reconciler.conditions import node_lost_status
from reconciler.web import dashboard
from reconciler.web.dashboard import COOKIE
from specs import Condition, ConditionStatus, DriverInfo, NodeCapacity, PermanentError, Phase, TenantStatus
from state.access import Role
from state.ledger import NodeSettings
from state.nodes import Allocatable, NodeRegistration, NodeStore
from tests.helpers import tenant, wait_for
from tests.web.conftest import Web

GIB = 1 << 30
HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(1)>'


@contextlib.contextmanager
def signed_in(web: Web, role: Role = Role.VIEWER) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web.api, timeout=10) as client:
        response = client.post("/dashboard/login", data={"token": web.tokens[role]})
        assert response.status_code == 303, response.text
        yield client


def register(web: Web, name: str, *, slots: int = 50, ksm_pages_sharing: int = 0, ttl: float = 300.0) -> None:
    capacity = NodeCapacity(cpu_millicores=4000, memory_bytes=8 * GIB, disk_bytes=100 * GIB, max_tenants=slots,
                            ksm_pages_sharing=ksm_pages_sharing)
    registration = NodeRegistration(name, {}, DriverInfo(name="fake"), capacity,
                                    Allocatable(400_000, 32 * GIB, 2000 * GIB, slots), ("base@1",))
    assert NodeStore(web.store).register(registration, holder=f"agent-{name}", ttl=ttl)


def place(web: Web, node: str, names: list[str], status: TenantStatus | None = None) -> None:
    """Tenants bound to a node whose agent is elsewhere, with the status that agent would have written.
    Inserted already bound (plain SQL, as a billing system may write), so the fixture's own controller,
    which binds unbound tenants to n1, never races for them."""
    with web.store.engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (name, template, node) VALUES (:name, 'base', :node)"),
                     [{"name": name, "node": node} for name in names])
    NodeStore(web.store).write_statuses([(name, status or TenantStatus(phase=Phase.RUNNING, node=node))
                                         for name in names])


def failed(node: str, reason: str, message: str) -> TenantStatus:
    now = datetime.now(UTC)
    return TenantStatus(phase=Phase.FAILED, node=node, conditions=(
        Condition(type="Ready", status=ConditionStatus.FALSE, reason=reason, message=message,
                  last_transition_time=now),))


def clones_fail(message: str) -> Faults:
    """Every clone from now on fails for good (a retry would fail again)."""
    faults = Faults()
    for nth in range(1, 200):
        faults.fail("clone", nth, PermanentError(message))
    return faults


def node_count(page: str, node: str) -> int:
    match = re.search(rf'<article class="node" data-node="{node}">.*?<b class="tenant-count">(\d+)</b>', page, re.S)
    assert match, f"no card for {node}"
    return int(match.group(1))


def test_the_dashboard_asks_for_a_token_and_a_wrong_one_gets_nothing(web: Web) -> None:
    with httpx.Client(base_url=web.api, timeout=10) as client:
        web.store.create_tenant(tenant("secret-name"))
        first = client.get("/", follow_redirects=True)
        assert first.status_code == 200 and 'name="token"' in first.text and "secret-name" not in first.text
        assert client.post("/dashboard/login", data={"token": "fleet_wrong"}).status_code == 401
        assert client.post("/dashboard/login", content="a=1&b=2&c=3&d=4&e=5&token=x",
                           headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 400
        for path in ("/dashboard/panels", "/dashboard/watch", "/dashboard/tenants/secret-name",
                     "/dashboard/search?q=s"):
            response = client.get(path)
            assert response.status_code == 401 and "secret-name" not in response.text, path


def test_signing_in_sets_an_http_only_strict_cookie_scoped_to_the_dashboard_never_a_url(web: Web) -> None:
    with httpx.Client(base_url=web.api, timeout=10) as client:
        response = client.post("/dashboard/login", data={"token": web.tokens[Role.VIEWER]})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert {"httponly", "samesite=strict", "path=/dashboard"} <= {p.strip().lower() for p in cookie.split(";")}
    assert web.tokens[Role.VIEWER] not in response.headers["location"]


def test_the_cookie_reads_the_dashboard_but_the_api_never_accepts_it(web: Web) -> None:
    with signed_in(web) as client:
        assert client.get("/dashboard/").status_code == 200
    # The API wants a Bearer token; the cookie (scoped to /dashboard anyway) is no way in, even sent there.
    with httpx.Client(base_url=web.api, cookies={COOKIE: web.tokens[Role.OPERATOR]}, timeout=10) as client:
        assert client.get("/api/v1/tenants").status_code == 401
        assert client.put("/api/v1/plans/price_x", json={"id": "price_x", "template": "base"}).status_code == 401


def test_a_login_posted_from_another_site_is_refused(web: Web) -> None:
    with httpx.Client(base_url=web.api, timeout=10) as client:
        response = client.post("/dashboard/login", data={"token": web.tokens[Role.VIEWER]},
                               headers={"origin": "https://evil.example"})
        assert response.status_code == 403 and "set-cookie" not in response.headers
        response = client.post("/dashboard/login", data={"token": web.tokens[Role.VIEWER]},
                               headers={"sec-fetch-site": "cross-site", "origin": "null"})
        assert response.status_code == 403 and "set-cookie" not in response.headers


def test_a_revoked_token_signs_the_dashboard_out(web: Web) -> None:
    with signed_in(web) as client:
        web.access.revoke_token(f"t-{Role.VIEWER.value}")
        page = client.get("/dashboard/")
        assert 'name="token"' in page.text and 'id="live"' not in page.text


def test_logging_out_clears_the_cookie(web: Web) -> None:
    with signed_in(web) as client:
        assert client.post("/dashboard/logout").status_code == 303
        assert 'name="token"' in client.get("/dashboard/").text


def test_the_panels_show_tenants_per_node_phases_ksm_and_the_ledger_of_a_known_fleet(web: Web) -> None:
    register(web, "n2", ksm_pages_sharing=1024)
    register(web, "n3")
    place(web, "n2", [f"b{i}" for i in range(5)])
    place(web, "n3", [f"c{i}" for i in range(3)])
    web.store.create_tenant(tenant("waiting"))  # n1 (the `fleet up` node of the fixture) takes it
    web.wait_running("waiting")
    prices = NodeSettings(web.store.session)
    prices.set_monthly_price("n2", 10_000)  # 100.00 a month over 5 tenants
    prices.set_monthly_price("n3", 6_000)  # 60.00 over 3

    with signed_in(web) as client:
        page = client.get("/dashboard/panels").text

    assert (node_count(page, "n2"), node_count(page, "n3")) == (5, 3)
    assert '<b id="total-tenants">9</b> tenants' in page
    assert re.search(r'data-phase="Running"><a [^>]+>Running <b class="count">9</b>', page)
    assert "Every tenant is Ready." in page
    assert 'KSM saves 4.0 MiB' in page
    ledger = page[page.index('id="ledger"'):]
    assert "<td>n2</td><td>100.00</td><td>5</td><td>20.00</td>" in ledger
    assert "<td>n3</td><td>60.00</td><td>3</td><td>20.00</td>" in ledger
    assert '<td>Fleet</td><td>160.00</td><td>8</td><td id="fleet-cost-per-tenant">20.00</td>' in ledger
    assert "1 nodes have no price yet" in ledger  # n1


def test_hostile_text_in_a_reason_and_a_message_is_shown_as_text_and_no_script_may_run(web: Web) -> None:
    register(web, "n2")
    place(web, "n2", ["victim"], failed("n2", HOSTILE, HOSTILE))

    with signed_in(web) as client:
        for path in ("/dashboard/", "/dashboard/panels", "/dashboard/tenants/victim", "/dashboard/search?q=vic"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert "<script>alert" not in response.text and "<img src=x" not in response.text, path
            assert "script-src 'self'" in response.headers["content-security-policy"]
            if path != "/dashboard/search?q=vic":
                assert HOSTILE in unescape(response.text), path  # shown, as text
        search = client.get("/dashboard/search", params={"q": '"><script>x</script>'})
        assert "<script>x" not in search.text and "&lt;script&gt;x" in search.text


def test_a_tenant_s_page_has_its_spec_status_conditions_events_and_after_delete_its_receipt(web: Web) -> None:
    with web.client() as api:
        assert api.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "acme"},
                                                 "spec": {"template": "base", "resources": {"memory": "512Mi"}}}
                        ).status_code == 201
    web.wait_running("acme")
    with signed_in(web) as client:
        page = client.get("/dashboard/tenants/acme").text
        assert '<b id="phase">Running</b>' in page
        assert "&quot;memory&quot;: 536870912" in page  # the spec
        assert "<td>Ready</td><td>True</td>" in page  # a condition
        assert "Scheduled" in page  # an event
        with web.client() as api:
            assert api.delete("/api/v1/tenants/acme").status_code == 202
        wait_for(lambda: web.store.get_tenant("acme") is None, what="acme to be gone")
        gone = client.get("/dashboard/tenants/acme").text
        body = client.get("/dashboard/tenants/acme", params={"part": "body"})  # what the live page redraws
        assert 'id="receipt"' in body.text and "<html" not in body.text and int(body.headers["x-fleet-revision"])
        assert "does not exist" in gone and 'id="receipt"' in gone
        receipt = gone[gone.index('id="receipt"'):gone.index('id="tenant-events"')]
        assert "Removed and verified gone" in receipt and "<li>" in receipt
        assert client.get("/dashboard/tenants/never-was").status_code == 404


def test_the_not_ready_panel_gives_the_reason_a_driver_failure_left(web: Web) -> None:
    web.driver.faults = clones_fail("the pool is read-only")
    web.store.create_tenant(tenant("broken"))
    wait_for(lambda: web.phase("broken") == "Failed", what="broken to fail")
    with signed_in(web) as client:
        panels = client.get("/dashboard/panels").text
    row = panels[panels.index('data-tenant="broken"'):]
    row = row[:row.index("</tr>")]
    assert "Failed" in row and "the pool is read-only" in row


def test_search_finds_tenants_by_part_of_their_name(web: Web) -> None:
    for name in ("acme", "acme-eu", "globex"):
        web.store.create_tenant(tenant(name))
    with signed_in(web) as client:
        page = client.get("/dashboard/search", params={"q": "acme"}).text
    assert 'data-tenant="acme"' in page and 'data-tenant="acme-eu"' in page and "globex" not in page


def test_each_phase_lists_all_of_its_tenants_page_by_page(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "SEARCH_PAGE", 2)
    register(web, "n2")
    place(web, "n2", ["r1", "r2", "r3"])
    place(web, "n2", ["f1"], failed("n2", "CloneFailed", "no space"))
    with signed_in(web) as client:
        panels = client.get("/dashboard/panels").text
        assert '<a href="/dashboard/search?phase=Running">Running' in panels
        first = client.get("/dashboard/search", params={"phase": "Running"}).text
        assert re.findall(r'data-tenant="(r\d)"', first) == ["r1", "r2"] and "f1" not in first
        following = unescape(re.search(r'id="next-page" href="([^"]+)"', first).group(1))
        assert following == "/dashboard/search?phase=Running&after=r2"
        second = client.get(following).text
        assert re.findall(r'data-tenant="(r\d)"', second) == ["r3"] and 'id="next-page"' not in second
        assert client.get("/dashboard/search", params={"phase": "Nonsense"}).status_code == 422


def test_the_dashboard_s_stream_follows_changes_for_the_cookie_holder(web: Web) -> None:
    with signed_in(web) as client:
        revision = web.store.current_revision()
        seen: list[str] = []
        with contextlib.suppress(httpx.ReadTimeout), client.stream(
            "GET", "/dashboard/watch", params={"revision": revision}, timeout=5
        ) as stream:
            web.store.create_tenant(tenant("fresh"))
            for line in stream.iter_lines():
                seen.append(line)
                if '"fresh"' in line:
                    break
    assert any('"name": "fresh"' in line for line in seen)


@pytest.mark.parametrize("asset", ["dashboard.js", "dashboard.css"])
def test_the_page_s_assets_are_served_by_the_api_itself(web: Web, asset: str) -> None:
    response = httpx.get(f"{web.api}/dashboard/assets/{asset}", timeout=10)
    assert response.status_code == 200 and response.headers["x-content-type-options"] == "nosniff"


def test_running_tenants_of_a_node_that_stopped_heartbeating_show_as_not_ready_and_are_counted(web: Web) -> None:
    register(web, "n2")
    register(web, "gone", ttl=0.05)
    place(web, "n2", ["fine"])
    place(web, "gone", ["stranded-1", "stranded-2"])
    nodes = NodeStore(web.store)
    wait_for(lambda: nodes.expire_nodes() == ["gone"], what="the node's lease to expire")
    now = datetime.now(UTC)
    nodes.write_statuses([(name, node_lost_status(TenantStatus(phase=Phase.RUNNING, node="gone"),
                                                  "node gone stopped heartbeating", now))
                          for name in ("stranded-1", "stranded-2")])
    with signed_in(web) as client:
        panels = client.get("/dashboard/panels").text
    not_ready = panels[panels.index('id="not-ready"'):panels.index('id="ledger"')]
    assert "Not Ready <small>2</small>" in not_ready
    assert 'data-tenant="stranded-1"' in not_ready and 'data-tenant="fine"' not in not_ready
    assert "NodeNotReady" in not_ready


def subscribe(web: Web, plans: dict[str, str]) -> None:
    """Live billing subscriptions owning these tenants, as the webhook leaves them (tenant -> plan)."""
    with web.store.engine.begin() as conn:
        conn.execute(text("INSERT INTO billing_subscriptions (subscription_id, tenant, customer, plan, "
                          "last_event_created) VALUES (:id, :tenant, 'cus_1', :plan, 0)"),
                     [{"id": f"sub_{name}", "tenant": name, "plan": plan} for name, plan in plans.items()])


def plan_row(page: str, plan: str) -> list[str]:
    match = re.search(rf'<tr data-plan="{re.escape(plan)}">(.*?)</tr>', page)
    assert match, f"no ledger line for {plan}"
    return [unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", match.group(1))]


def test_the_ledger_sums_cost_and_the_usage_this_process_reads_per_plan(web: Web) -> None:
    from reconciler.web.context import LocalUsage

    web.context.usage = LocalUsage("n1", web.driver.usage)  # as `fleet up`: its node's driver runs here
    register(web, "n2")
    place(web, "n2", ["b0", "b1", "b2", "b3"])
    NodeSettings(web.store.session).set_monthly_price("n2", 10_000)  # 25.00 a tenant
    for name in ("u1", "u2", "loose"):
        web.store.create_tenant(tenant(name))
        web.wait_running(name)
    subscribe(web, {"u1": "price_a", "u2": "price_a", "b0": "price_a", "b1": "price_a",
                    "b2": "price_b", "b3": "price_b"})
    web.driver.set_usage("u1", cpu_seconds=1.5, memory_bytes=1 << 20, disk_bytes=4096, network_in_bytes=1024)
    web.driver.set_usage("u2", cpu_seconds=2.5, memory_bytes=3 << 20, network_out_bytes=2048)
    web.driver.set_usage("loose", cpu_seconds=0.25)

    with signed_in(web) as client:
        page = client.get("/dashboard/panels").text

    # price_a: two tenants on priced n2 (25.00 each), two on unpriced n1, whose usage this process reads.
    assert plan_row(page, "price_a") == ["price_a", "4", "50.00 (2 priced)", "2 of 4", "4.0 s", "4.0 MiB",
                                         "4.0 KiB", "1.0 KiB", "2.0 KiB"]
    # price_b: all on n2, whose agent serves its usage: no usage here, and no zeros pretending there is.
    assert plan_row(page, "price_b") == ["price_b", "2", "50.00", "—", "—", "—", "—", "—", "—"]
    assert plan_row(page, "(no plan)") == ["(no plan)", "1", "—", "1 of 1", "0.2 s", "0 B", "0 B", "0 B", "0 B"]
    note = unescape(page[page.index('id="plan-usage-note"'):])
    assert "host of node n1: 3 tenants" in note and "other 4 tenants" in note


def test_without_a_driver_in_the_process_the_ledger_says_where_usage_is_read(web: Web) -> None:
    web.store.create_tenant(tenant("alone"))
    web.wait_running("alone")
    subscribe(web, {"alone": "price_a"})
    with signed_in(web) as client:
        page = client.get("/dashboard/panels").text
    assert plan_row(page, "price_a") == ["price_a", "1", "—", "—", "—", "—", "—", "—", "—"]
    note = unescape(page[page.index('id="plan-usage-note"'):])
    assert "this API process runs none" in note and "fleet agent --metrics-listen" in note


def test_disk_shared_by_copy_on_write_is_each_node_s_report_or_says_not_measured(web: Web) -> None:
    from drivers.fake import TEMPLATE_BYTES

    register(web, "n2")  # registered by an agent whose driver does not measure it (as LXD)
    with signed_in(web) as client:
        assert '<b id="disk-shared">not measured</b>' in client.get("/dashboard/panels").text
    for name in ("s1", "s2", "s3"):
        web.store.create_tenant(tenant(name))
        web.wait_running(name)
    capacity = web.driver.capacity()
    assert capacity.disk_shared_bytes == 3 * TEMPLATE_BYTES  # the fake: each template's size times its clones
    registration = NodeRegistration("n3", {}, DriverInfo(name="fake"), capacity,
                                    Allocatable(400_000, 32 * GIB, 2000 * GIB, 50), ("base@1",))
    assert NodeStore(web.store).register(registration, holder="agent-n3", ttl=300)
    with signed_in(web) as client:
        page = client.get("/dashboard/panels").text
    # n1 (the fixture's `fleet up` node, never registered) has reported nothing either.
    assert '<b id="disk-shared">192.0 MiB</b> <span class="muted">(not measured on n1, n2)' in page
    assert "copy-on-write shares 192.0 MiB" in page[page.index('data-node="n3"'):]


def test_the_ledger_reads_the_host_at_most_once_in_two_seconds_however_often_pages_refresh() -> None:
    from reconciler.web.dashboard_ledger import UsageSample
    from specs import Usage

    now = [100.0]
    reads: list[float] = []

    def fresh() -> list[Usage]:
        reads.append(now[0])
        return [Usage(tenant="t", cpu_seconds=now[0])]

    sample = UsageSample(max_age_seconds=2.0, clock=lambda: now[0])
    assert sample.read(fresh)[0].cpu_seconds == 100.0
    now[0] = 101.9
    assert sample.read(fresh)[0].cpu_seconds == 100.0, "a refresh a moment later reuses the last read"
    now[0] = 102.0
    assert sample.read(fresh)[0].cpu_seconds == 102.0
    assert reads == [100.0, 102.0]
