"""The five-minute tour, as a test: through the real CLI against a running `fleet up`."""

import sqlite3
import subprocess
from typing import Any

from tests.e2e.conftest import Fleet

TENANT = """
kind: Tenant
metadata:
  name: acme
  labels: {plan: pro}
spec:
  template: base
  resources: {cpu: 500m, memory: MEMORY, disk: 1Gi, pids: 128}
  network: {ingress: [80]}
"""


def _condition(document: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in document["status"]["conditions"] if c["type"] == kind)


def _events(fleet: Fleet, name: str, reason: str) -> int:
    lines = fleet.run("events", name, "-n", "200").stdout.splitlines()
    return sum(1 for line in lines if f" {reason} " in f" {line} ")


def test_lifecycle_apply_change_pause_resume_delete(fleet: Fleet, operator: subprocess.Popen[str]) -> None:
    applied = fleet.run("apply", "-f", "-", stdin=TENANT.replace("MEMORY", "256Mi"))
    assert applied.stdout.strip() == "tenant/acme created, generation 1"
    running = fleet.wait_phase("acme", "Running")
    assert running["metadata"]["generation"] == 1 and running["status"]["observed_generation"] == 1
    assert _condition(running, "Ready")["status"] == "True"
    applied_before = _events(fleet, "acme", "ResourcesApplied")

    changed = fleet.run("apply", "-f", "-", stdin=TENANT.replace("MEMORY", "512Mi"))
    assert changed.stdout.strip() == "tenant/acme configured, generation 2"
    fleet.run("get", "tenants")  # the table renders with a changed tenant
    document = fleet.tenant("acme")
    assert document is not None and document["metadata"]["generation"] == 2

    def followed() -> bool:
        doc = fleet.tenant("acme")
        return bool(doc and doc["status"]["observed_generation"] == 2 and doc["status"]["phase"] == "Running")

    from tests.helpers import wait_for

    wait_for(followed, timeout=15, what="observed_generation to follow generation 2")
    assert _events(fleet, "acme", "ResourcesApplied") == applied_before + 1
    assert fleet.tenant("acme")["spec"]["resources"]["memory"] == "512Mi"  # type: ignore[index]

    describe = fleet.run("describe", "tenant", "acme").stdout
    for expected in ("Phase:         Running", "memory=512Mi", "ResourcesApplied", "Generation:    2 (observed 2)"):
        assert expected in describe

    assert fleet.run("pause", "acme").stdout.strip() == "tenant/acme paused, generation 3"
    fleet.wait_phase("acme", "Paused")
    fleet.run("resume", "acme")
    fleet.wait_phase("acme", "Running")

    deleted = fleet.run("delete", "tenant", "acme", "--wait", "--timeout", "30")
    assert "tenant/acme deleted; removed:" in deleted.stdout and "subvolume" in deleted.stdout
    gone = fleet.run("get", "tenant", "acme", check=False)
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert _events(fleet, "acme", "Finalized") == 1


def test_a_raw_sql_insert_from_another_process_is_converged(fleet: Fleet, operator: subprocess.Popen[str]) -> None:
    with sqlite3.connect(fleet.db) as conn:
        conn.execute("INSERT INTO tenants (name, template) VALUES ('billing-1', 'base')")
    running = fleet.wait_phase("billing-1", "Running", timeout=5)
    assert running["status"]["address"]
    with sqlite3.connect(fleet.db) as conn:
        conn.execute("UPDATE tenants SET pids = 64 WHERE name = 'billing-1'")
        generation = conn.execute("SELECT generation FROM tenants WHERE name = 'billing-1'").fetchone()[0]
    assert generation == 2
    from tests.helpers import wait_for

    wait_for(lambda: (fleet.tenant("billing-1") or {}).get("status", {}).get("observed_generation") == 2,
             timeout=10, what="the raw update to be converged")
    with sqlite3.connect(fleet.db) as conn:
        conn.execute("DELETE FROM tenants WHERE name = 'billing-1'")
    wait_for(lambda: fleet.tenant("billing-1") is None, timeout=10, what="the raw delete to be finished")


def test_a_disk_bandwidth_round_trips_through_get_yaml_and_apply(initialised: Fleet) -> None:
    fleet = initialised
    spec = TENANT.replace("MEMORY", "256Mi").replace("pids: 128", "pids: 128, io: 50Mi")
    created = fleet.run("apply", "-f", "-", stdin=spec)
    assert created.stdout.strip() == "tenant/acme created, generation 1"
    document = fleet.run("get", "tenant", "acme", "-o", "yaml").stdout
    assert "io: 50Mi" in document
    again = fleet.run("apply", "-f", "-", stdin=document)
    assert again.stdout.strip() == "tenant/acme unchanged, generation 1"
    header, row = fleet.run("get", "tenants").stdout.splitlines()
    assert header.split()[8] == "IO" and row.split()[8] == "50Mi"
    assert "io=50Mi" in fleet.run("describe", "tenant", "acme").stdout
    fleet.run("apply", "-f", "-", stdin=document.replace("io: 50Mi", "io: 200Mi"))
    assert fleet.tenant("acme")["metadata"]["generation"] == 2  # type: ignore[index]
    unset = fleet.run("apply", "-f", "-", stdin="".join(
        line for line in document.splitlines(keepends=True) if line.strip() != "io: 50Mi"))
    assert unset.stdout.strip() == "tenant/acme configured, generation 3"
    assert "io=100Mi" in fleet.run("describe", "tenant", "acme").stdout, "the built-in template's default"


def test_get_watch_prints_changes_as_they_happen(fleet: Fleet, operator: subprocess.Popen[str]) -> None:
    watcher = subprocess.Popen([*_fleet_cmd(), "get", "tenants", "--watch"], env=fleet.env,
                               stdout=subprocess.PIPE, text=True)
    try:
        fleet.run("apply", "-f", "-", stdin=TENANT.replace("MEMORY", "256Mi"))
        fleet.wait_phase("acme", "Running")
        assert watcher.stdout is not None
        seen: list[str] = []
        from tests.helpers import wait_for

        def saw_running() -> bool:
            line = watcher.stdout.readline() if watcher.stdout else ""
            seen.append(line)
            return "acme" in line and "Running" in line

        wait_for(saw_running, timeout=10, interval=0, what="the watch to show acme Running")
    finally:
        watcher.terminate()
        watcher.wait(10)


def _fleet_cmd() -> list[str]:
    from tests.e2e.conftest import FLEET

    return [FLEET]
