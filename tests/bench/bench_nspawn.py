"""The real node: signup-to-Running (insert to the page answering) against the physical floor measured in
the same run, and density of idle tenants.

Run as root: .venv/bin/python -m tests.bench.bench_nspawn [--signups 100] [--density 300]
It starts `fleet up --driver nspawn` on its own loop-backed pool under /var/tmp/fleet-bench and removes
everything afterwards. Between signups it measures the physical steps by hand (tests/bench/physical.py:
snapshot, namespace + veth, nspawn to port 80), with and without a user namespace, on the same template."""

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.bench import physical
from tests.bench.report import write_section

DATA = Path("/var/tmp/fleet-bench")
FLEET = str(Path(sys.executable).parent / "fleet")
KSM = Path("/sys/kernel/mm/ksm")


def fleet(*args: str) -> str:
    env = {**os.environ, "FLEET_DATA_DIR": str(DATA)}
    return subprocess.run([FLEET, *args], env=env, capture_output=True, text=True, check=True).stdout


def address_of(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT phase, address FROM tenant_status WHERE name = ?", (name,)).fetchone()
    return row[1] if row and row[0] == "Running" else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tenant_pids() -> list[int]:
    """nspawn and everything in Fleet's tenant cgroups."""
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup/memory/fleet").rglob("cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "systemd-nspawn":
            pids.add(process.pid)
    return sorted(pids)


def wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signups", type=int, default=100)
    parser.add_argument("--density", type=int, default=300)
    parser.add_argument("--ksm-seconds", type=float, default=60)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    subprocess.run(["rm", "-rf", str(DATA)], check=True)
    env = {**os.environ, "FLEET_DATA_DIR": str(DATA)}
    ksm_before = {name: (KSM / name).read_text().strip() for name in ("run", "pages_to_scan")}
    (KSM / "pages_to_scan").write_text("2000")
    (KSM / "run").write_text("1")  # the launcher opts tenants in only while KSM runs
    # The default pool size: thin-provisioned (x20) it has room for 400 tenants of the default 1Gi disk.
    up = subprocess.Popen([FLEET, "up", "--driver", "nspawn", "--pool-size", "20Gi", "--address-range", "10.216.0.0/16",
                           "--log-level", "WARNING"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: (DATA / "fleet.db").exists(), 30, "the store")
        time.sleep(1)  # let the operator finish starting; not a measurement
        db = sqlite3.connect(DATA / "fleet.db", isolation_level=None)
        free_before = psutil.virtual_memory().available
        latencies = []
        floors: list[physical.Sample] = []
        floors_without_userns: list[physical.Sample] = []
        pool, template = DATA / "pool", DATA / "pool/templates/base@1"
        load_before = os.getloadavg()[0]
        for i in range(args.signups):
            if i:  # the first signup builds the template
                floors.append(physical.measure(pool, template, "10.217.255.1", "10.217.255.2", userns=True))
                floors_without_userns.append(
                    physical.measure(pool, template, "10.217.255.1", "10.217.255.2", userns=False)
                )
            name = f"s{i:03d}"
            started = time.perf_counter()
            db.execute("INSERT INTO tenants (name, template, memory_bytes) VALUES (?, 'base', 67108864)", (name,))
            wait(lambda name=name: address_of(db, name) is not None, 10, f"{name} Running")
            address = address_of(db, name)
            assert address is not None
            wait(lambda address=address: physical.answers(address), 10, f"{name} page")
            latencies.append((time.perf_counter() - started) * 1000)
        load_after = os.getloadavg()[0]
        names = [f"d{i:03d}" for i in range(max(0, args.density - args.signups))]
        with db:
            db.executemany("INSERT INTO tenants (name, template, memory_bytes) VALUES (?, 'base', 67108864)",
                           [(n,) for n in names])
        wait(lambda: db.execute("SELECT count(*) FROM tenant_status WHERE phase = 'Running'").fetchone()[0]
             >= args.density, 600, "all Running")
        time.sleep(5)  # idle tenants settle; not a synchronisation
        pids = tenant_pids()
        pss_total = sum(pss_kib(pid) for pid in pids)
        free_after = psutil.virtual_memory().available
        disk = os.statvfs(DATA / "pool")
        used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
        template_size = int(subprocess.run(["du", "-sb", str(DATA / "pool/templates/base@1")], capture_output=True,
                                           text=True).stdout.split()[0])
        ksm_deadline = time.monotonic() + args.ksm_seconds
        while time.monotonic() < ksm_deadline:
            time.sleep(1)
        sharing = int((KSM / "pages_sharing").read_text())
        shared = int((KSM / "pages_shared").read_text())
        node = fleet("node", "status", "--driver", "nspawn")
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        physical.cleanup(DATA / "pool")
        for name, value in ksm_before.items():
            (KSM / name).write_text(value)
        cleanup()
    n = args.density
    p50 = percentile(latencies, 0.5)

    def median(samples: list[physical.Sample], field: str) -> float:
        return percentile([getattr(sample, field) for sample in samples], 0.5)

    floor = median(floors, "total_ms")
    rows = [
        ("signups measured (sequential, INSERT to page answering)", str(args.signups)),
        ("signup to page answering, p50", f"{p50:.0f} ms"),
        ("signup to page answering, p99", f"{percentile(latencies, 0.99):.0f} ms (goal: < 1 s)"),
        ("physical floor, p50 of the sum (same run, by hand, user namespace on)",
         f"{floor:.0f} ms = snapshot {median(floors, 'snapshot_ms'):.1f} + namespace and veth "
         f"{median(floors, 'network_ms'):.1f} + nspawn to port 80 {median(floors, 'start_to_http_ms'):.1f}"),
        ("signup p50 / physical floor", f"{p50 / floor:.2f}x (goal: at most 1.3x)"),
        ("nspawn to port 80, p50: with / without a user namespace",
         f"{median(floors, 'start_to_http_ms'):.1f} / {median(floors_without_userns, 'start_to_http_ms'):.1f} ms"),
        ("physical floor without a user namespace, p50", f"{median(floors_without_userns, 'total_ms'):.0f} ms"),
        ("load average (1 min) before / after the signups",
         f"{load_before:.1f} / {load_after:.1f} on {os.cpu_count()} CPUs (the bench alone adds about 1; more is "
         "other work on the machine)"),
        ("idle tenants running", str(n)),
        ("PSS of nspawn + tenant processes, per tenant", f"{pss_total / n / 1024:.2f} MiB (goal: < 5 MiB)"),
        ("host MemAvailable drop, per tenant", f"{(free_before - free_after) / n / (1 << 20):.2f} MiB"),
        ("pool bytes used, all tenants + template", f"{used / (1 << 20):.0f} MiB"),
        ("template size", f"{template_size / (1 << 20):.1f} MiB"),
        ("KSM pages shared / sharing after the run", f"{shared} / {sharing} ({sharing * 4 // 1024} MiB saved)"),
    ]
    body = "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(body)
    print(node)
    if not args.no_write:
        write_section("Real node: signup to Running, density (nspawn)", "sudo .venv/bin/python -m "
                      "tests.bench.bench_nspawn", body + "\n\nEach tenant is the built-in busybox template "
                      "(`httpd` on port 80) with 64 MiB memory, in its own user namespace. Signups are one at "
                      "a time: a raw SQL INSERT, then poll until the page answers over HTTP from the host. The "
                      "physical floor is measured between signups by tests/bench/physical.py on the same pool "
                      "and template: the snapshot ioctl, a namespace and veth pair made with pyroute2's own "
                      "helpers, and systemd-nspawn started by hand until port 80 answers.")


def cleanup() -> None:
    from drivers.nspawn import NspawnDriver
    from drivers.nspawn_firewall import Firewall
    from tests.integration.conftest import teardown_loop_pool

    driver = NspawnDriver(DATA, image_size=20 << 30, address_range="10.216.0.0/16")
    for name in driver.pool.list_tenants():
        for _ in range(50):
            try:
                driver.delete(name)
                break
            except Exception:  # the btrfs cleaner may hold a qgroup a moment
                time.sleep(0.2)
    driver.close()
    Firewall().remove_table_if_unused()
    teardown_loop_pool(DATA)
    subprocess.run(["rm", "-rf", str(DATA)], check=True)
    print(json.dumps({"cleaned": str(DATA)}))


if __name__ == "__main__":
    main()
