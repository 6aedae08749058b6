"""LXD vs nspawn vs raw LXD REST, side by side in one run: clone time, create-to-running, and a signup
through the reconciler to Running (and to its page answering).

Each round runs, one after another on the same host: the LXD driver (`clone`; then clone +
apply_resources + start + apply_network, the planner's order), the same on the nspawn driver, raw LXD REST
(one `POST /1.0/instances`, a `copy` of the same template snapshot with the same limits, root device and
NIC, and one `PUT .../state` start, each waited on: what `lxc copy` + `lxc start` send), then one signup
per driver through the reconciler (a tenant written to the store, the controller's passes until the status
says Running; then until its page answers over HTTP). The order inside a round rotates, so no column
always runs first. Needs root, LXD and what the nspawn driver needs; starts the LXD daemon when none
answers (and stops only that one); uses its own LXD pool, bridge and range and its own nspawn data
directory, and removes all of them. Refuses to run the nspawn part while the nspawn integration tests run
(they share cgroups and the firewall table). Run:

    .venv/bin/python tests/bench/bench_lxd.py [--samples 20] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loguru import logger

from drivers import Driver
from drivers.lxd import TENANT_CONFIG, LxdDriver
from drivers.lxd_api import LXD_SOCKET, LxdClient
from drivers.lxd_config import MARKER, resource_config, root_device
from drivers.lxd_images import snapshot_source
from reconciler.controller import Controller, ControllerConfig
from specs import Network, Phase, Resources, Template
from state import Store
from tests.bench.report import write_section
from tests.helpers import drain, http_get, tenant
from tests.lxd.runtime import lxd_answers

COMMAND = ".venv/bin/python tests/bench/bench_lxd.py"
TITLE = "LXD vs nspawn vs raw LXD REST: clone and signup to Running"
POOL, NETWORK, RANGE = "fleet-bench", "fleetbench0", "10.219.2.0/24"
NSPAWN_DATA, NSPAWN_RANGE = Path("/var/tmp/fleet-bench-side"), "10.212.0.0/16"
RESOURCES = Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi")
# As the reconciler passes it: the store's template, whose defaults this tenant keeps.
BASE = Template(name="base", version="1", resources=RESOURCES, network=Network(ingress=(80,)))


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))] * 1000


def _raw_create(client: LxdClient, name: str, address: str) -> None:
    config = {key: value for key, value in resource_config(RESOURCES).items() if value is not None}
    client.request("POST", "/1.0/instances", json={
        "name": name, "type": "container", "profiles": [], "source": {
            "type": "copy", "source": snapshot_source(BASE.ref), "instance_only": True},
        "config": {**TENANT_CONFIG, **config, MARKER: "true"},
        "devices": {"root": root_device(POOL, RESOURCES), "eth0": {
            "type": "nic", "network": NETWORK, "name": "eth0", "ipv4.address": address,
            "security.port_isolation": "true", "security.ipv4_filtering": "true", "security.mac_filtering": "true"}},
    })


def _remove(client: LxdClient, name: str) -> None:
    client.request("PUT", f"/1.0/instances/{name}/state", json={"action": "stop", "force": True})
    client.request("DELETE", f"/1.0/instances/{name}")


def _until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


class Site:
    """One driver behind a controller and a store of its own, as `fleet up` runs it (in this process)."""

    def __init__(self, driver: Driver, directory: Path) -> None:
        self.driver = driver
        self.store = Store(f"sqlite:///{directory / 'fleet.db'}")
        self.controller = Controller(self.store, driver, ControllerConfig(node="bench"))

    def phase(self, name: str) -> Phase | None:
        record = self.store.get_tenant(name)
        return record.status.phase if record is not None and record.status is not None else None

    def sign_up(self, name: str) -> tuple[float, float]:
        """Seconds from the store write to Running, and to the page answering."""
        self.controller.poll_changes()  # what earlier rounds left queued is settled before the clock starts
        drain(self.controller)
        started = time.perf_counter()
        self.store.apply_tenant(tenant(name))  # keeps its template's defaults, as the raw copy keeps RESOURCES
        self.controller.poll_changes()

        def running() -> bool:
            """One pass of whatever is queued (only this tenant, or its retry after a backoff), then look."""
            key = self.controller.queue.get(timeout=0)
            if key is not None:
                try:
                    self.controller.process(key)
                finally:
                    self.controller.queue.done(key)
            return self.phase(name) == Phase.RUNNING

        _until(running, 30, f"{name} to be Running")
        to_running = time.perf_counter() - started
        record = self.store.get_tenant(name)
        address = record.status.address if record is not None and record.status is not None else None
        assert address is not None
        _until(lambda: http_get(address, timeout=0.5), 10, f"{name}'s page")
        return to_running, time.perf_counter() - started

    def cancel(self, name: str) -> None:
        """Delete through the store, as a cancellation does, until the record is gone."""
        self.store.request_delete(name)
        self.controller.poll_changes()

        def gone() -> bool:
            drain(self.controller)
            return self.store.get_tenant(name) is None

        _until(gone, 60, f"{name} to be deleted")

    def close(self) -> None:
        self.store.close()


def _provision(driver: Driver, name: str) -> tuple[float, float]:
    """Seconds to clone, and to clone + resources + start + network (the planner's order for a new tenant)."""
    began = time.perf_counter()
    driver.ensure_template(BASE)
    driver.clone(name, BASE, generation=1)
    cloned = time.perf_counter()
    driver.apply_resources(name, RESOURCES, generation=1)
    driver.start(name)
    driver.apply_network(name, Network(ingress=(80,)))
    return cloned - began, time.perf_counter() - began


Made = list[tuple[Driver | Site, str]]


def measure(lxd: Site, nspawn: Site | None, client: LxdClient, samples: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}

    def note(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)

    def provision(site: Site, label: str, name: str, made: Made) -> None:
        made.append((site.driver, name))
        clone, run = _provision(site.driver, name)
        note(f"{label} clone", clone)
        note(f"{label} run", run)

    def sign_up(site: Site, label: str, name: str, made: Made) -> None:
        made.append((site, name))
        running, page = site.sign_up(name)
        note(f"{label} signup", running)
        note(f"{label} page", page)

    def raw_lxd(index: int) -> None:
        began = time.perf_counter()
        _raw_create(client, f"fb-raw-{index}", f"10.219.2.{200 + index % 50}")
        cloned = time.perf_counter()
        client.request("PUT", f"/1.0/instances/fb-raw-{index}/state", json={"action": "start"})
        note("raw clone", cloned - began)
        note("raw run", time.perf_counter() - began)

    for index in range(samples):
        made: Made = []
        steps: list[Callable[[], None]] = [
            partial(provision, lxd, "lxd", f"fb-driver-{index}", made),
            partial(raw_lxd, index),
            partial(sign_up, lxd, "lxd", f"fb-signup-{index}", made),
        ]
        if nspawn is not None:
            steps += [partial(provision, nspawn, "nspawn", f"fbs-driver-{index}", made),
                      partial(sign_up, nspawn, "nspawn", f"fbs-signup-{index}", made)]
        shift = index % len(steps)
        for step in steps[shift:] + steps[:shift]:
            step()
        for owner, name in made:
            if isinstance(owner, Site):
                owner.cancel(name)
            else:
                owner.delete(name)
        _remove(client, f"fb-raw-{index}")
    # Round 0 warms up (the LXD bridge and ACL are made by the first clone, each store's first write
    # creates its tables' pages): left out.
    return {key: values[1:] for key, values in times.items()}


def _nspawn_busy() -> str | None:
    found = subprocess.run(["pgrep", "-f", "test_nspawn_usage|tests/integration"], capture_output=True, text=True)
    return found.stdout.strip() or None


def _open_nspawn() -> Driver:
    from drivers.nspawn import NspawnDriver

    _sweep_nspawn()
    return NspawnDriver(NSPAWN_DATA, image_size=4 << 30, address_range=NSPAWN_RANGE, node="bench")


def _sweep_nspawn(driver: Driver | None = None) -> None:
    from drivers.nspawn import NspawnDriver
    from drivers.nspawn_firewall import Firewall
    from tests.integration.conftest import teardown_loop_pool

    if driver is None and (NSPAWN_DATA / "pool.img").exists():
        driver = NspawnDriver(NSPAWN_DATA, image_size=4 << 30, address_range=NSPAWN_RANGE, node="bench")
    if isinstance(driver, NspawnDriver):
        for name in driver.pool.list_tenants():
            driver.delete(name)
        driver.close()
    Firewall().remove_table_if_unused()
    teardown_loop_pool(NSPAWN_DATA)
    shutil.rmtree(NSPAWN_DATA, ignore_errors=True)


def _sweep_lxd(client: LxdClient) -> None:
    for instance in client.instances(state=False):
        if instance.name.startswith("fb-") or (instance.devices.get("root") or {}).get("pool") == POOL:
            if instance.running:
                client.request("PUT", f"/1.0/instances/{instance.name}/state", json={"action": "stop", "force": True})
            client.request("DELETE", f"/1.0/instances/{instance.name}")
            shutil.rmtree(Path("/var/log/lxd") / instance.name, ignore_errors=True)  # LXD keeps its log
    for path in (f"/1.0/networks/{NETWORK}", f"/1.0/network-acls/{NETWORK}-ingress", f"/1.0/storage-pools/{POOL}"):
        if client.exists(path):
            client.request("DELETE", path)
    for leftover in [*Path("/var/log/lxd").glob("fb-*"), Path(f"/var/log/lxd/dnsmasq.{NETWORK}.log")]:
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--no-nspawn", action="store_true", help="LXD and raw LXD only")
    args = parser.parse_args()
    if not args.no_nspawn and (busy := _nspawn_busy()):
        raise SystemExit(f"nspawn integration tests are running ({busy}); run later, or pass --no-nspawn")
    logger.remove()
    client = LxdClient(LXD_SOCKET)
    daemon = None
    if not lxd_answers(client):
        daemon = subprocess.Popen(["lxd", "--group", "lxd", "--logfile=/var/log/lxd/fleet-bench.log"],
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: lxd_answers(client), 30, "the LXD daemon to answer")
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="fleet-bench-lxd-"))
    lxd_site = nspawn_site = None
    try:
        _sweep_lxd(client)
        lxd_driver = LxdDriver(storage_pool=POOL, network=NETWORK, pool_size=4 << 30, address_range=RANGE,
                               node="bench")
        (scratch / "lxd").mkdir()
        lxd_site = Site(lxd_driver, scratch / "lxd")
        if not args.no_nspawn:
            (scratch / "nspawn").mkdir()
            nspawn_site = Site(_open_nspawn(), scratch / "nspawn")
        for site in (lxd_site, nspawn_site):  # templates are built before the clock starts
            if site is not None:
                site.driver.ensure_template(BASE)
        times = measure(lxd_site, nspawn_site, client, args.samples + 1)
        load_after = os.getloadavg()
    finally:
        for site in (lxd_site, nspawn_site):
            if site is not None:
                site.close()
        if nspawn_site is not None:
            _sweep_nspawn(nspawn_site.driver)
        if lxd_site is not None:
            lxd_site.driver.close()
        _sweep_lxd(client)
        shutil.rmtree(scratch, ignore_errors=True)
        if daemon is not None:
            subprocess.run(["lxd", "shutdown", "--timeout=30"], check=False, capture_output=True, timeout=60)
            daemon.wait(timeout=30)
            for family in ("inet", "bridge"):  # LXD leaves its firewall tables; this daemon was ours
                subprocess.run(["nft", "delete", "table", family, "lxd"], check=False, capture_output=True)

    def cell(key: str) -> str:
        if key not in times:
            return "- | -"
        p50, p90 = _ms(times[key])
        return f"{p50:.0f} | {p90:.0f}"

    def over(key: str, raw: str) -> str:
        return f"{100 * (_ms(times[key])[0] / _ms(times[raw])[0] - 1):+.0f}%"

    rows = [
        f"| clone | {cell('lxd clone')} | {cell('nspawn clone')} | {cell('raw clone')} | "
        f"{over('lxd clone', 'raw clone')} |",
        f"| create to running (driver calls) | {cell('lxd run')} | {cell('nspawn run')} | {cell('raw run')} | "
        f"{over('lxd run', 'raw run')} |",
        f"| signup to Running (reconciler) | {cell('lxd signup')} | {cell('nspawn signup')} | {cell('raw run')} | "
        f"{over('lxd signup', 'raw run')} |",
        f"| signup to page answering | {cell('lxd page')} | {cell('nspawn page')} | - | - | - |",
    ]
    cpus = os.cpu_count()
    body = "\n".join([
        f"LXD 5.0.2 (btrfs pool on a loop image) and nspawn (btrfs on a loop image, user namespaces), the same "
        f"busybox template, {args.samples} rounds; each round runs every column once, in a rotating order; "
        "milliseconds. Driver rows: `clone`, then clone + apply_resources + start + apply_network (the "
        "planner's order) until the last call returns. Raw LXD: `POST /1.0/instances` (copy of the same "
        "snapshot, same limits and NIC) + `PUT state` start, each waited on, and nothing else (no ingress "
        "rule, no address inside: its page never answers). Signup: a tenant written to the store, then the "
        "controller's passes in this process until the status says Running (then until the page answers "
        "from the host); the raw column beside it is raw create to running.",
        "",
        "| measure | LXD driver p50 | LXD p90 | nspawn p50 | nspawn p90 | raw LXD p50 | raw LXD p90 "
        "| LXD over raw (p50) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Goal (issue 12): Fleet adds at most 20% over the raw LXD calls. What the driver adds beyond them: "
        "a listing of the instances to choose a free address, an ownership and NIC check before each step, "
        "the ingress rule (written in the background after the copy), the address put inside after the "
        "start; the reconciler adds its two inspects (before it plans, after it acts) and the store's "
        "writes. Where each millisecond went and what was cut: docs/lxd.md, \"Where the time goes\". nspawn "
        "is a different machine model (a btrfs snapshot and a process, no daemon): it is here for scale.",
        "",
        f"Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} on {cpus} CPUs (the "
        "bench itself keeps about one busy).",
    ])
    print(body)
    if not args.no_write:
        write_section(TITLE, COMMAND, body)


if __name__ == "__main__":
    main()
