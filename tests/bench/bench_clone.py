"""Clone cost of the nspawn pool: Pool.clone (snapshot ioctl + exclusive limit + marker + rename) against a
raw `btrfs subvolume snapshot` CLI of the same template, at 10 and at 300 existing tenants, with simple
quotas (squota, what the pool uses) and with classic qgroups (the fallback). Also the pool's delete
(subvolume + qgroup, verified gone) with squota.

Needs root, btrfs-progs and loop devices; makes loop-backed pools in a temporary directory and removes
them. Not a pytest test (the name does not start with test_). Run:

    .venv/bin/python tests/bench/bench_clone.py [--samples 100] [--no-write]
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
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loguru import logger

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_templates
from drivers.nspawn_pool import Pool
from specs import Template
from tests.bench.report import write_section

LEVELS = (10, 300)
IMAGE_SIZE = 8 << 30
DISK_LIMIT = 1 << 30
COMMAND = ".venv/bin/python tests/bench/bench_clone.py"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def prepare_classic(data_dir: Path) -> None:
    """A fresh image with classic qgroups already on, which Pool.open then keeps."""
    data_dir.mkdir(parents=True)
    image, mountpoint = data_dir / "pool.img", data_dir / "pool"
    with open(image, "wb") as handle:
        handle.truncate(IMAGE_SIZE)
    subprocess.run(["mkfs.btrfs", "-f", "-q", str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "btrfs", device.stdout.strip(), str(mountpoint)], check=True)
    subprocess.run(["btrfs", "quota", "enable", str(mountpoint)], check=True)


def measure(pool: Pool, samples: int, mode: str, temporary_root: str) -> list[str]:
    template = Template(name="base", version="1")
    nspawn_templates.ensure_builtin(pool, template)
    source = pool.template_path(template.ref)
    rows = []
    population = 0
    for level in LEVELS:
        while population < level:
            pool.clone(f"fill-{population}", template.ref, disk_limit=DISK_LIMIT)
            population += 1
        btrfs.sync(pool.root)
        clone, cli, ioctl = [], [], []
        for index in range(samples):  # interleaved, so drift in the host hits all three alike
            name = f"l{level}-{index}"
            clone.append(timed(lambda n=f"{name}-pool": pool.clone(n, template.ref, disk_limit=DISK_LIMIT)))
            target = str(pool.tenants_dir / f".bench-{name}-cli")
            argv = ["btrfs", "subvolume", "snapshot", str(source), target]
            cli.append(timed(lambda a=argv: subprocess.run(a, check=True, capture_output=True)))
            ioctl.append(timed(lambda n=f".bench-{name}-ioctl": btrfs.snapshot(source, pool.tenants_dir, n)))
        population += 3 * samples
        measured = (("Pool.clone", clone), ("btrfs subvolume snapshot (CLI)", cli), ("snapshot ioctl only", ioctl))
        for label, values in measured:
            p50, p99 = percentiles(values)
            rows.append(f"| {mode} | {level} | {label} | {p50:.1f} | {p99:.1f} |")
        print(rows[-3:], flush=True)
    big = import_big_template(pool, Path(temporary_root) / f"rootfs-{mode.replace(' ', '-')}")
    clone, cli = [], []
    for index in range(samples):
        clone.append(timed(lambda n=f"big-{index}": pool.clone(n, big, disk_limit=DISK_LIMIT)))
        argv = ["btrfs", "subvolume", "snapshot", str(pool.template_path(big)), str(pool.tenants_dir / f".big-{index}")]
        cli.append(timed(lambda a=argv: subprocess.run(a, check=True, capture_output=True)))
    population += 2 * samples
    for label, values in (("Pool.clone, 128 MiB template", clone), ("CLI snapshot, 128 MiB template", cli)):
        p50, p99 = percentiles(values)
        rows.append(f"| {mode} | {population} | {label} | {p50:.1f} | {p99:.1f} |")
    pool.qgroup_release_seconds = 120.0  # classic qgroups wait long on the cleaner; measure, do not fail
    deletes = [timed(lambda i=i: pool.delete_tenant(f"l300-{i}-pool")) for i in range(min(samples, 30))]
    p50, p99 = percentiles(deletes)
    rows.append(
        f"| {mode} | {population} | Pool.delete_tenant (subvolume + qgroup, verified) | {p50:.1f} | {p99:.1f} |"
    )
    print(rows[-3:], flush=True)
    return rows


def import_big_template(pool: Pool, rootfs: Path) -> str:
    """A tree shaped like a distribution: 1,024 files of 128 KiB of random data."""
    for index in range(1024):
        directory = rootfs / "usr" / "lib" / f"d{index // 64}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index}").write_bytes(os.urandom(128 << 10))
    template = Template(name="big", version="1")
    nspawn_templates.import_rootfs(pool, template, rootfs)
    shutil.rmtree(rootfs)
    return template.ref


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    logger.remove()
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as temporary:
        for mode in ("squota", "classic qgroups"):
            data_dir = Path(temporary) / mode.replace(" ", "-")
            if mode != "squota":
                prepare_classic(data_dir)
            pool = Pool.open(data_dir, image_size=IMAGE_SIZE)
            try:
                rows += measure(pool, args.samples, mode, temporary)
            finally:
                pool.detach()
    body = "\n".join(
        [
            f"Busybox template (~2 MiB) unless named, {args.samples} samples per row (30 for deletes), clone rows",
            "interleaved; milliseconds. `Pool.clone` is snapshot ioctl + exclusive-bytes limit ioctl + marker xattr",
            "+ rename; the CLI rows fork `btrfs subvolume snapshot` of the same read-only template.",
            "",
            "| quotas | existing tenants | operation | p50 ms | p99 ms |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(body)
    if not args.no_write:
        write_section("Clone cost (nspawn pool)", COMMAND, body)


if __name__ == "__main__":
    main()
