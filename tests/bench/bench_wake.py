"""Wake on request vs a raw start of the same container, and the density of sleeping tenants.

Wake: a real `fleet up` (nspawn driver, its own loop-backed pool and address range) with one tenant. Each
round puts it to sleep (`POST /sleep?wait=true`: the container is stopped) and then, in a rotating order:
the gateway wake (a GET through the gateway with the customer's claim, timed from the request leaving the
client to the first byte of the container's page), and the raw start (the same container started by the
driver in this process, timed to the first byte of its page read straight from its address: what a
start costs with no gateway, no store and no reconciler). Between the two it is put to sleep again.

Density (`--density N`): N tenants through the API; `--running` of them stay up, the rest run once and are
put to sleep. The host's memory in use (MemTotal - MemAvailable, caches dropped) and the operator's RSS are
read with only the running ones and again with every tenant, and every running tenant and a sample of the
sleeping ones are reached through the gateway.

Root and what the nspawn driver needs; refuses to run while the nspawn integration tests run (they share
the firewall table and the cgroup root). Run:

    .venv/bin/python tests/bench/bench_wake.py [--samples 50] [--density 1000 --running 50] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
import psutil

from tests.bench.report import write_section
from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.integration.sweep import sweep_node

COMMAND = ".venv/bin/python tests/bench/bench_wake.py"
TITLE = "Sleep and wake: wake on request vs a raw start"
DENSITY_TITLE = "Sleep and wake: sleeping tenants' density"
DATA_DIR = Path("/var/tmp/fleet-bench-wake")
RANGE = "10.220.0.0/16"
PREFIX = "fw-"
ARGS = ("--driver", "nspawn", "--pool-size", "8Gi", "--address-range", RANGE, "--max-tenants", "2000")


class Site:
    def __init__(self, node: Fleet, api: str, gateway: str, token: str) -> None:
        self.node = node
        self.api = api
        self.gateway = gateway
        self.auth = {"authorization": f"Bearer {token}"}
        self.http = httpx.Client(headers=self.auth, timeout=120)

    def create(self, name: str, *, asleep: bool = False) -> None:
        body = {"metadata": {"name": name}, "spec": {"template": "base", "sleep": {"after": "30d"},
                                                      "resources": {"memory": "64Mi", "cpu": "250m", "disk": "64Mi"}}}
        answer = self.http.post(f"{self.api}/api/v1/tenants", json=body)
        assert answer.status_code == 201, answer.text
        if asleep:
            assert self.http.post(f"{self.api}/api/v1/tenants/{name}/sleep").status_code == 200

    def phase(self, name: str) -> str | None:
        status = self.http.get(f"{self.api}/api/v1/tenants/{name}").json().get("status") or {}
        return status.get("phase")

    def address(self, name: str) -> str:
        return str(self.http.get(f"{self.api}/api/v1/tenants/{name}").json()["status"]["address"])

    def sleep(self, name: str) -> None:
        answer = self.http.post(f"{self.api}/api/v1/tenants/{name}/sleep", params={"wait": "true"})
        assert answer.status_code == 200 and answer.json()["phase"] == "Sleeping", answer.text

    def claim(self, name: str) -> str:
        return str(self.http.post(f"{self.api}/api/v1/tenants/{name}/authorize").json()["claim"])

    def first_byte(self, name: str, claim: str) -> float:
        """Seconds from the request leaving to the first byte of the page, through the gateway."""
        host = f"{name}.fleet.localhost:{self.gateway.rsplit(':', 1)[1]}"
        with httpx.Client(base_url=self.gateway, headers={"host": host}, timeout=60) as browser:
            browser.cookies.set("fleet_claim", claim)
            began = time.perf_counter()
            with browser.stream("GET", "/") as response:
                first = next(response.iter_raw(1), b"")
                took = time.perf_counter() - began
                assert response.status_code == 200 and first, (response.status_code, response.headers)
        return took


def _raw_first_byte(driver: object, name: str, address: str) -> float:
    """The driver's start, then the container's page straight from its address, first byte."""
    began = time.perf_counter()
    driver.start(name)  # type: ignore[attr-defined]
    while True:
        try:
            with httpx.Client(timeout=5) as direct, direct.stream("GET", f"http://{address}/") as response:
                next(response.iter_raw(1))
                return time.perf_counter() - began
        except httpx.TransportError:
            time.sleep(0.002)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def measure_wakes(site: Site, samples: int) -> dict[str, list[float]]:
    from drivers.nspawn import NspawnDriver

    name = f"{PREFIX}wake"
    site.create(name)
    wait_for(lambda: site.phase(name) == "Running", timeout=60, what=f"{name} Running")
    claim, address = site.claim(name), site.address(name)
    driver = NspawnDriver(DATA_DIR, image_size=8 << 30, address_range=RANGE)
    times: dict[str, list[float]] = {"gateway": [], "raw": []}
    try:
        for index in range(samples + 1):  # the first round warms caches and is dropped
            steps: list[tuple[str, Callable[[], float]]] = [
                ("gateway", lambda: site.first_byte(name, claim)),
                ("raw", lambda: _raw_first_byte(driver, name, address)),
            ]
            for label, step in steps[index % 2:] + steps[:index % 2]:
                site.sleep(name)
                took = step()
                if index:
                    times[label].append(took)
                # The reconciler has it Running again (a raw start is found running while asleep: woken).
                wait_for(lambda: site.phase(name) == "Running", timeout=30, interval=0.01, what="Running again")
    finally:
        driver.close()
    return times


MEMINFO_FIELDS = ("MemTotal", "MemAvailable", "Slab", "SUnreclaim", "Percpu")


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes, after the reclaimable caches are dropped (page cache of the pool's loop file
    and of the store, dentries and inodes): what stays is what the tenants hold, not what the kernel keeps
    around because nothing else wants the memory."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    found: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in MEMINFO_FIELDS:
            found[key] = int(value.split()[0]) * 1024
    found["in_use"] = found["MemTotal"] - found["MemAvailable"]
    return found


def _wait_phases(site: Site, names: list[str], phase: str) -> None:
    def settled() -> bool:
        mine: dict[str, str | None] = {}
        after: str | None = ""
        while after is not None:
            page = site.http.get(f"{site.api}/api/v1/tenants", params={"limit": 500, "after": after}).json()
            mine |= {t["metadata"]["name"]: (t.get("status") or {}).get("phase") for t in page["items"]}
            after = page["next_after"]
        return all(mine.get(name) == phase for name in names)

    wait_for(settled, timeout=3600, interval=1.0, what=f"{len(names)} tenants {phase}")


def measure_density(site: Site, operator_pid: int, total: int, running: int, wave: int = 100) -> dict[str, float]:
    """`running` tenants made and left running, memory read; then the rest in waves of `wave`, each made
    running, then put to sleep (as a real tenant sleeps: after it ran), and memory read again. The second
    reading less the first, over the sleeping tenants, is what a sleeping tenant costs the host."""
    names = [f"{PREFIX}d{index:04d}" for index in range(total)]
    operator = psutil.Process(operator_pid)
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(site.create, names[:running]))
        _wait_phases(site, names[:running], "Running")
        base, base_rss = _meminfo(), operator.memory_info().rss
        for first in range(running, total, wave):
            batch = names[first:first + wave]
            list(pool.map(site.create, batch))
            _wait_phases(site, batch, "Running")
            list(pool.map(lambda name: site.http.post(f"{site.api}/api/v1/tenants/{name}/sleep"), batch))
            _wait_phases(site, batch, "Sleeping")
    made = time.monotonic() - began
    _wait_phases(site, names[:running], "Running")
    after, after_rss = _meminfo(), operator.memory_info().rss
    # Everything is reachable: each running tenant, and a sample of sleeping ones (each wakes).
    for name in names[:running]:
        assert site.first_byte(name, site.claim(name)) > 0
    sample = random.Random(7).sample(names[running:], min(20, total - running))
    wakes = [site.first_byte(name, site.claim(name)) for name in sample]
    sleeping = total - running

    def per_sleeping(key: str) -> float:
        return (after[key] - base[key]) / sleeping / 1024

    return {"tenants": total, "running": running, "sleeping": sleeping, "made_seconds": made,
            "host_kib_per_sleeping": per_sleeping("in_use"), "slab_kib_per_sleeping": per_sleeping("Slab"),
            "unreclaimable_kib_per_sleeping": per_sleeping("SUnreclaim"),
            "percpu_kib_per_sleeping": per_sleeping("Percpu"),
            "rss_kib_per_sleeping": (after_rss - base_rss) / sleeping / 1024,
            "sample_wake_p50_ms": statistics.median(wakes) * 1000, "sampled": len(sample)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--density", type=int, default=0, help="tenants for the density run (0: skip it)")
    parser.add_argument("--running", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    node = Fleet(data_dir=DATA_DIR)
    sweep_node(DATA_DIR, prefix=PREFIX, address_range=RANGE, image_size=8 << 30)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    token = node.run("token", "create", "--name", "bench", "--role", "operator").stdout.strip()
    load_before = os.getloadavg()[0]
    process = start_operator(node, *ARGS, "--log-level", "WARNING")
    try:
        line = next(line for line in node.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        gateway = re.search(r"gateway: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        site = Site(node, api, gateway, token)
        times = measure_wakes(site, args.samples)
        density = measure_density(site, process.pid, args.density, args.running) if args.density else None
        load_after = os.getloadavg()[0]
    finally:
        stop_operator(node, process)
        sweep_node(DATA_DIR, prefix=PREFIX, address_range=RANGE, image_size=8 << 30)
    rows = [
        "| measure | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        f"| wake on request: request at the gateway to the first byte of the page | {_pct(times['gateway'], 0.5):.0f}"
        f" | {_pct(times['gateway'], 0.99):.0f} |",
        f"| raw start of the same container: driver start to the first byte read from its address | "
        f"{_pct(times['raw'], 0.5):.0f} | {_pct(times['raw'], 0.99):.0f} |",
    ]
    body = (
        f"nspawn driver, a busybox tenant (64Mi, 250m), {args.samples} wakes of each kind in one run, alternating;"
        " before each the tenant is put to sleep (its container stopped) and waited for.\n\n" + "\n".join(rows)
        + "\n\nGoal (issue 14): p50 under 250 ms from the request reaching the gateway to the first byte."
        " What the gateway wake adds to the raw start: the store write of the wake, the reconciler's pass (read,"
        " inspect, start, inspect, status write) and the gateway's polls (store every 5 ms, the port every 3 ms)."
    )
    load = f"\n\nLoad average (1 min) before / after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} CPUs."
    density_body = None
    if density is not None:
        held = (density["unreclaimable_kib_per_sleeping"] + density["percpu_kib_per_sleeping"]
                + density["rss_kib_per_sleeping"])
        density_body = (
            f"{density['tenants']:.0f} tenants on this one node (nspawn): {density['running']:.0f} made and left"
            f" running, then {density['sleeping']:.0f} more in waves of 100, each wave made running and then put to"
            f" sleep, in {density['made_seconds']:.0f} s through the API. Memory is read (caches dropped first)"
            " after the running ones are up and again at the end; the difference over the sleeping tenants:\n\n"
            "| per sleeping tenant | KiB |\n| --- | --- |\n"
            f"| host memory in use (MemTotal - MemAvailable) | {density['host_kib_per_sleeping']:.1f} |\n"
            f"| kernel slab (all) | {density['slab_kib_per_sleeping']:.1f} |\n"
            f"| kernel slab, unreclaimable | {density['unreclaimable_kib_per_sleeping']:.1f} |\n"
            f"| per-CPU kernel memory | {density['percpu_kib_per_sleeping']:.1f} |\n"
            f"| the operator's RSS | {density['rss_kib_per_sleeping']:.1f} |\n"
            f"| **held, not reclaimable: unreclaimable slab + per-CPU + the operator's RSS** | "
            f"{held:.1f} |\n\n"
            "The host-wide figure moves by tens of MiB with everything else on the machine (the bench's own"
            " process, the store's files, other daemons), more than 950 sleeping tenants hold, so it can come out"
            " below zero; the sum of what the tenants hold that the kernel cannot reclaim is the figure to judge"
            " by. "
            f"Every running tenant answered through the gateway; {density['sampled']:.0f} sleeping ones picked at"
            f" random woke on a request, p50 {density['sample_wake_p50_ms']:.0f} ms."
            " Goal (issue 14): under 100 KiB of host memory per sleeping tenant beyond its row and its disk delta."
            + load
        )
    body += load
    print(body)
    if density_body is not None:
        print(density_body)
    if not args.no_write:
        write_section(TITLE, COMMAND, body)
        if density_body is not None:
            write_section(DENSITY_TITLE, COMMAND + f" --density {args.density} --running {args.running}",
                          density_body)


if __name__ == "__main__":
    main()
