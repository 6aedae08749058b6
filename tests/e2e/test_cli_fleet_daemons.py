"""`fleet scheduler --metrics-listen`: the scheduler of a fleet serves its own metrics, as `fleet agent` does;
a scrape parses with Prometheus' own parser and counts the binding it made."""

import re
import signal
import subprocess
import threading

import httpx
from prometheus_client.parser import text_string_to_metric_families

from specs import DriverInfo, NodeCapacity
from state import Store
from state.access import Access, Role
from state.nodes import Allocatable, NodeRegistration, NodeStore
from tests.e2e.conftest import FLEET, Fleet
from tests.helpers import tenant, wait_for


def test_the_scheduler_serves_metrics_that_count_its_bindings(initialised: Fleet) -> None:
    store = Store(f"sqlite:///{initialised.db}")
    try:
        capacity = NodeCapacity(cpu_millicores=4000, memory_bytes=8 << 30, disk_bytes=100 << 30, max_tenants=10)
        registration = NodeRegistration("n1", {}, DriverInfo(name="fake"), capacity,
                                        Allocatable(400_000, 32 << 30, 2000 << 30, 10), ("base@1",))
        assert NodeStore(store).register(registration, holder="agent-n1", ttl=600)  # an agent elsewhere
        token = Access(store).create_token(name="prometheus", role=Role.VIEWER)[1]
        store.create_tenant(tenant("bound-by-it"))
        process = subprocess.Popen(
            [FLEET, "scheduler", "--metrics-listen", "127.0.0.1:0", "--interval-seconds", "0.1"],
            env=initialised.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        assert process.stderr is not None
        stderr = process.stderr
        threading.Thread(target=lambda: initialised.logs.extend(iter(stderr.readline, "")), daemon=True).start()
        try:
            up = wait_for(lambda: next((line for line in initialised.logs if "scheduler is up" in line), None)
                          or process.poll() is not None, timeout=30, what="fleet scheduler to start")
            assert process.poll() is None, "".join(initialised.logs)
            address = re.search(r"Metrics: (http://\S+)/metrics\.", str(up))
            assert address, up
            wait_for(lambda: NodeStore(store).bindings().get("bound-by-it") == "n1",
                     what="the scheduler to bind the tenant")
            with httpx.Client(base_url=address.group(1), timeout=10) as client:
                refused = client.get("/metrics")
                scraped = client.get("/metrics", headers={"authorization": f"Bearer {token}"})
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, "".join(initialised.logs[-30:])
    finally:
        store.close()
    assert refused.status_code == 401, "a viewer token is needed, as for the API's /metrics"
    assert scraped.status_code == 200, scraped.text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped.text) for s in family.samples}
    assert samples[("fleet_scheduler_bindings_total", (("node", "n1"),))] == 1
    assert samples[("fleet_scheduler_leader", ())] == 1
    assert samples[("fleet_scheduler_pending_tenants", ())] in (0, 1)  # read before or after the binding
    assert ("fleet_scheduler_unbound_deletes_finalized_total", ()) in samples
