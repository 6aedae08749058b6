"""The LXD driver against raw LXD REST calls, side by side in one run: clone time, and create-to-running.

Driver: `LxdDriver.clone` alone; then clone + apply_resources + apply_network + start (until `start`
returns: the instance runs, its address is set inside and its ingress rule is in the ACL). Raw: one
`POST /1.0/instances` (a `copy` of the same template snapshot, with the same limits, root device and NIC
in the body) and one `PUT .../state` start, each waited on, as a hand-written client would do it. Rows are
interleaved (driver, raw, driver, ...) so both see the same host. Needs root and LXD; starts the daemon
when none answers (and stops only that one); uses its own pool, bridge and range and removes them. Run:

    .venv/bin/python tests/bench/bench_lxd.py [--samples 30] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loguru import logger

from drivers.lxd import TENANT_CONFIG, LxdDriver
from drivers.lxd_api import LXD_SOCKET, LxdClient
from drivers.lxd_config import MARKER, resource_config, root_device
from drivers.lxd_images import snapshot_source
from specs import Network, Resources, Template
from tests.bench.report import write_section
from tests.lxd.runtime import lxd_answers

COMMAND = ".venv/bin/python tests/bench/bench_lxd.py"
POOL, NETWORK, RANGE = "fleet-bench", "fleetbench0", "10.219.2.0/24"
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


def measure(driver: LxdDriver, client: LxdClient, samples: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {key: [] for key in ("driver clone", "raw clone", "driver run", "raw run")}
    for index in range(samples):
        name = f"fb-driver-{index}"
        began = time.perf_counter()
        driver.clone(name, BASE)
        cloned = time.perf_counter()
        driver.apply_resources(name, RESOURCES)
        driver.apply_network(name, Network(ingress=(80,)))
        driver.start(name)
        times["driver clone"].append(cloned - began)
        times["driver run"].append(time.perf_counter() - began)
        raw = f"fb-raw-{index}"
        began = time.perf_counter()
        _raw_create(client, raw, f"10.219.2.{200 + index % 50}")
        cloned = time.perf_counter()
        client.request("PUT", f"/1.0/instances/{raw}/state", json={"action": "start"})
        times["raw clone"].append(cloned - began)
        times["raw run"].append(time.perf_counter() - began)
        driver.delete(name)
        _remove(client, raw)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    logger.remove()
    client = LxdClient(LXD_SOCKET)
    daemon = None
    if not lxd_answers(client):
        daemon = subprocess.Popen(["lxd", "--group", "lxd", "--logfile=/var/log/lxd/fleet-bench.log"],
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not lxd_answers(client):  # a condition with a deadline: the daemon's socket answering
            if time.monotonic() > deadline:
                raise SystemExit("the LXD daemon did not answer within 30 s")
            time.sleep(0.05)
    driver = LxdDriver(storage_pool=POOL, network=NETWORK, pool_size=4 << 30, address_range=RANGE, node="bench")
    try:
        driver.ensure_template(BASE)
        times = measure(driver, client, args.samples)
    finally:
        for instance in client.instances(state=False):
            if instance.name.startswith("fb-") or (instance.devices.get("root") or {}).get("pool") == POOL:
                if instance.running:
                    client.request("PUT", f"/1.0/instances/{instance.name}/state",
                                   json={"action": "stop", "force": True})
                client.request("DELETE", f"/1.0/instances/{instance.name}")
                shutil.rmtree(Path("/var/log/lxd") / instance.name, ignore_errors=True)  # LXD keeps its log
        for path in (f"/1.0/networks/{NETWORK}", f"/1.0/network-acls/{NETWORK}-ingress", f"/1.0/storage-pools/{POOL}"):
            client.request("DELETE", path)
        driver.close()
        for leftover in [*Path("/var/log/lxd").glob("fb-*"), Path(f"/var/log/lxd/dnsmasq.{NETWORK}.log")]:
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        if daemon is not None:
            subprocess.run(["lxd", "shutdown", "--timeout=30"], check=False, capture_output=True, timeout=60)
            daemon.wait(timeout=30)
    rows = []
    for what, driver_key, raw_key in (("clone", "driver clone", "raw clone"), ("create to running", "driver run",
                                                                                 "raw run")):
        (d50, d90), (r50, r90) = _ms(times[driver_key]), _ms(times[raw_key])
        rows.append(f"| {what} | {d50:.0f} | {d90:.0f} | {r50:.0f} | {r90:.0f} | {100 * (d50 / r50 - 1):+.0f}% |")
    body = "\n".join([
        f"LXD 5.0.2, btrfs pool on a loop image, busybox template, {args.samples} samples each, interleaved; "
        "milliseconds. Driver: `clone`, then clone + apply_resources + apply_network (ACL rule, address inside) + "
        "start. Raw: `POST /1.0/instances` (copy of the same snapshot, same limits and NIC) + `PUT state` start.",
        "The driver's extra work: reading the instances to choose a free address, the tenant's rule in the ingress "
        "ACL (an ACL write, 30-60 ms of LXD's time, done while the copy runs), the checks before each step, and "
        "the pid read after start to put the address inside. Raw REST sets no ingress policy at all.",
        "",
        "| step | driver p50 | driver p90 | raw REST p50 | raw REST p90 | driver overhead (p50) |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Load average (1 min) when done, on a machine shared with other work: {os.getloadavg()[0]:.1f}.",
    ])
    print(body)
    if not args.no_write:
        write_section("LXD driver against raw LXD REST", COMMAND, body)


if __name__ == "__main__":
    main()
