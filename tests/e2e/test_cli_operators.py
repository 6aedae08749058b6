"""The operators' verbs as a user runs them against `fleet up --driver fake`: `get --field-selector` and `-l`,
`describe node`, `events --watch`, and `/metrics` from the same process."""

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.web.webhooks import sign
from specs import Resources, Template
from state import Store
from tests.e2e.conftest import FLEET, Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.web.conftest import subscription_event

SECRET = "whsec_e2e_operators"
TENANTS = """kind: Tenant
metadata: {name: web-a, labels: {tier: web}}
spec: {template: base}
---
kind: Tenant
metadata: {name: web-b, labels: {tier: web}}
spec: {template: base}
---
kind: Tenant
metadata: {name: db-a, labels: {tier: db}}
spec: {template: big}
"""


@dataclass
class WebhookFleet(Fleet):
    """`fleet` with a billing webhook secret in its environment."""

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "FLEET_WEBHOOK_SECRET": SECRET}


@dataclass
class Running:
    fleet: WebhookFleet
    api: str
    viewer: str


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Four tenants on a node with three slots: web-a and db-a Running, web-b Paused, and paid-a (made by a
    billing webhook with plan price_basic) Pending, as no slot is left for it."""
    fleet = WebhookFleet(data_dir=tmp_path_factory.mktemp("operators") / "data")
    fleet.data_dir.mkdir(parents=True)
    store = Store(f"sqlite:///{fleet.db}")
    store.upsert_template(Template(name="big", version="1",
                                   resources=Resources(cpu="1", memory="512Mi", disk="1Gi", pids=256)))
    store.close()
    viewer = fleet.run("token", "create", "--name", "prometheus", "--role", "viewer").stdout.strip()
    fleet.run("plan", "apply", "-f", "-", stdin="kind: Plan\nid: price_basic\ntemplate: base\n")
    process = start_operator(fleet, "--driver", "fake", "--node", "n1", "--max-tenants", "3")
    try:
        line = next(line for line in fleet.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        fleet.run("apply", "-f", "-", stdin=TENANTS)
        fleet.wait_phase("web-a", "Running")
        fleet.wait_phase("db-a", "Running")
        fleet.wait_phase("web-b", "Running")
        fleet.run("pause", "web-b")
        fleet.wait_phase("web-b", "Paused")
        payload = json.dumps(subscription_event("evt_paid", metadata={"fleet_tenant": "paid-a"})).encode()
        response = httpx.post(f"{api}/api/v1/webhooks/billing", content=payload, headers={
            "stripe-signature": sign(payload, SECRET, int(time.time())), "content-type": "application/json"})
        assert response.status_code == 200, response.text
        wait_for(lambda: "Unschedulable" in fleet.run("describe", "tenant", "paid-a").stdout,
                 what="paid-a to be told no node has room")
        yield Running(fleet, api, viewer)
    finally:
        stop_operator(fleet, process)


def names(up: Running, *args: str) -> set[str]:
    result = up.fleet.run("get", "tenants", "-o", "json", *args)
    return {item["metadata"]["name"] for item in json.loads(result.stdout)["items"]}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--field-selector", "phase!=Running"), {"web-b", "paid-a"}),
        (("--field-selector", "phase=Running"), {"web-a", "db-a"}),
        (("--field-selector", "phase=Running,template=big"), {"db-a"}),
        (("--field-selector", "template!=big"), {"web-a", "web-b", "paid-a"}),
        (("--field-selector", "node=n1"), {"web-a", "web-b", "db-a"}),
        (("--field-selector", "node="), {"paid-a"}),
        (("--field-selector", "plan=price_basic"), {"paid-a"}),
        (("--field-selector", "plan!=price_basic,phase!=Pending"), {"web-a", "web-b", "db-a"}),
        (("-l", "tier=web"), {"web-a", "web-b"}),
        (("-l", "tier=web", "--field-selector", "phase=Running"), {"web-a"}),
        (("-l", "tier=web,tier=db"), {"db-a"}),  # a key given twice: the later value, as kubectl takes it
    ],
)
def test_get_tenants_shows_only_what_the_selectors_match(up: Running, args: tuple[str, ...],
                                                        expected: set[str]) -> None:
    assert names(up, *args) == expected


def test_the_table_of_a_field_selection_lists_those_tenants_only(up: Running) -> None:
    lines = up.fleet.run("get", "tenants", "--field-selector", "phase!=Running").stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "PHASE"]
    assert sorted((line.split()[0], line.split()[1]) for line in lines[1:]) == [("paid-a", "Pending"),
                                                                               ("web-b", "Paused")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--field-selector", "colour=red"), "--field-selector: unknown field 'colour'; choose one of: phase, node"),
        (("--field-selector", "phase=Runing"), "--field-selector: phase 'Runing' does not exist"),
        (("--field-selector", "phase"), "--field-selector: 'phase' must be FIELD=VALUE or FIELD!=VALUE"),
        (("-l", "tier"), "--selector: 'tier' must be KEY=VALUE"),
    ],
)
def test_a_bad_selector_is_one_line_and_exit_2(up: Running, args: tuple[str, ...], message: str) -> None:
    result = up.fleet.run("get", "tenants", *args, check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {message}"), result.stderr


def test_describe_node_shows_its_room_and_its_tenants(up: Running) -> None:
    text = up.fleet.run("describe", "node", "n1").stdout
    assert "Status:        Ready" in text
    assert re.search(r"tenants\s+\d+\s+3\s+3\s+100%", text), text  # slots: capacity, allocatable, allocated, used
    assert "Tenants by phase: Paused 1, Running 2" in text
    assert "Tenants (3):\n  db-a\n  web-a\n  web-b" in text
    missing = up.fleet.run("describe", "node", "nowhere", check=False)
    assert missing.returncode == 1 and "node nowhere is not registered; see fleet nodes" in missing.stderr


def test_describe_tenant_still_works_through_the_same_verb(up: Running) -> None:
    assert "Phase:         Paused" in up.fleet.run("describe", "tenant", "web-b").stdout
    wrong = up.fleet.run("describe", "widget", "x", check=False)
    assert wrong.returncode == 2 and "kind: must be 'tenant' or 'node'" in wrong.stderr


def test_events_watch_prints_new_events_as_they_happen(up: Running) -> None:
    watcher = subprocess.Popen([FLEET, "events", "--watch", "-n", "3"], env=up.fleet.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    stdout = watcher.stdout
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True).start()
    try:
        wait_for(lambda: len(lines) >= 4, what="the header and the last 3 events")
        assert lines[0].split()[:3] == ["AGE", "TENANT", "TYPE"]
        up.fleet.run("resume", "web-b")  # its reconcile records events the watcher has not seen
        up.fleet.wait_phase("web-b", "Running")
        wait_for(lambda: any("web-b" in line and "Running" in line for line in lines[4:]),
                 what="the watcher to print web-b's Running event")
    finally:
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=10) == 0
        up.fleet.run("pause", "web-b")
        up.fleet.wait_phase("web-b", "Paused")


def test_metrics_of_fleet_up_match_what_get_shows(up: Running) -> None:
    response = httpx.get(f"{up.api}/metrics", headers={"authorization": f"Bearer {up.viewer}"})
    assert response.status_code == 200
    tenants = {
        (sample.labels["phase"], sample.labels["node"]): sample.value
        for family in text_string_to_metric_families(response.text) if family.name == "fleet_tenants"
        for sample in family.samples
    }
    assert tenants[("Running", "n1")] == len(names(up, "--field-selector", "phase=Running"))
    assert tenants[("Paused", "n1")] == len(names(up, "--field-selector", "phase=Paused"))
    assert tenants[("Pending", "")] == len(names(up, "--field-selector", "phase=Pending,node="))
    families = {family.name for family in text_string_to_metric_families(response.text)}
    # fleet up wires the usage of its node, the agent's counters and the webhook's into one registry.
    assert {"fleet_tenant_memory_bytes", "fleet_reconciles", "fleet_webhook_events"} <= families


def test_help_lists_the_new_verbs(tmp_path: Path) -> None:
    result = subprocess.run([FLEET, "--help"], capture_output=True, text=True, timeout=60)
    assert "top " in result.stdout and "doctor " in result.stdout


def test_top_nodes_shows_each_node_s_allocation_from_the_store(up: Running) -> None:
    # The fake driver's containers live in the `fleet up` process: this one reads a node of its own, so only
    # the store's side is compared here (the live side is tests/integration/test_nspawn_usage.py's).
    result = up.fleet.run("top", "nodes", "--driver", "fake", "--node", "n1", "--interval", "0", "-o", "json")
    (node,) = json.loads(result.stdout)
    assert node["name"] == "n1" and node["ready"] is True
    assert node["allocated"]["tenants"] == 3
    assert node["live"] is not None and node["live"]["cpu_cores"] is None, "no interval: CPU time only"
    table = up.fleet.run("top", "nodes", "--driver", "fake", "--node", "n1", "--interval", "0").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATUS", "RUNNING"]
    assert table.splitlines()[1].split()[:2] == ["n1", "Ready"]
