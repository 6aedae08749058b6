"""10,000 tenants on the fake driver (zero latency): insert-to-all-Running, decisions per second, a no-op
resync pass, peak RSS, and the longest write transaction (how long SQLite's write lock was held at once:
what a raw SQL writer may have to wait). Run: .venv/bin/python -m tests.bench.bench_fake_10k [--tenants N]
[--raw-writer: a raw SQL writer with a 5 s busy timeout beside it, in another process]"""

import argparse
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

from loguru import logger

from drivers.fake import FakeDriver
from reconciler.controller import Controller, ControllerConfig
from state import Store
from tests.bench.report import write_section
from tests.raw_writer import RawWriter, WriteHolds


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--raw-writer", action="store_true")
    args = parser.parse_args()
    logger.remove()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "fleet.db"
        store = Store(f"sqlite:///{db}")
        controller = Controller(
            store, FakeDriver(), ControllerConfig(node="bench", workers=args.workers, resync_seconds=3600)
        )
        holds = WriteHolds(store)
        writer = RawWriter(store) if args.raw_writer else None
        controller.start()
        started = time.perf_counter()
        with sqlite3.connect(db) as conn:  # as a billing system would: plain SQL, one transaction
            conn.executemany(
                "INSERT INTO tenants (name, template) VALUES (?, 'base')", [(f"t{i:05d}",) for i in range(args.tenants)]
            )
        inserted = time.perf_counter()
        while store.counts_by_phase().get("Running", 0) < args.tenants:
            time.sleep(0.05)
        converged = time.perf_counter()
        report = writer.stop() if writer is not None else None
        reconciles = controller.stats.reconciles
        while writer is not None and _count(db, "SELECT count(*) FROM tenants WHERE name LIKE 'raw-%'"):
            time.sleep(0.05)  # the raw writer's deletes finish before the resync that must find nothing to do
        controller.stop()
        resyncs = []
        for _ in range(5):
            t0 = time.perf_counter()
            queued = controller.resync()
            resyncs.append(time.perf_counter() - t0)
            assert queued == 0, f"a converged fleet must need nothing, {queued} queued"
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        store.close()
    total = converged - started
    rows = [
        ("tenants", f"{args.tenants:,}"),
        ("workers", str(args.workers)),
        ("insert (one SQL transaction)", f"{(inserted - started) * 1000:.0f} ms"),
        ("insert to all Running", f"{total:.2f} s"),
        ("reconcile passes", f"{reconciles:,}"),
        ("reconcile decisions per second", f"{reconciles / (converged - inserted):,.0f} /s (goal: ≥ 1,000)"),
        ("tenants converged per second", f"{args.tenants / total:,.0f} /s"),
        ("no-op resync over all (median of 5)", f"{sorted(resyncs)[2] * 1000:.0f} ms (goal: < 1 s)"),
        ("peak RSS of the operator process", f"{peak_rss_mb:.0f} MB (goal: < 150 MB)"),
        ("write transactions (SQLite write lock held): longest, p99",
         f"{holds.longest_ms:.0f} ms, {holds.percentile_ms(0.99):.1f} ms over {len(holds.holds):,}"),
    ]
    if report is not None:
        rows.append(("raw SQL writer beside it (5 s busy timeout)",
                     f"{report.done:,} statements, {report.failed} failed, longest wait {report.worst_ms:.0f} ms"))
    body = "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(body)
    if not args.no_write:
        write_section(
            "10,000 tenants on the fake driver", "make bench-fake (.venv/bin/python -m tests.bench.bench_fake_10k)",
            body + "\n\nEach tenant's first pass binds it, clones, applies resources and network, starts it and writes "
            "status and six events in one transaction; the binding's write brings one more (no-op) pass.",
        )


if __name__ == "__main__":
    main()
