"""The operator hands freed C heap back to the host (drivers/heap.py)."""

import threading

import psutil
import pytest

from drivers import heap


def test_freed_memory_of_a_thread_goes_back_to_the_host_on_trim() -> None:
    if heap._glibc() is None:
        pytest.skip("not glibc: the heap is left to the C library")
    process = psutil.Process()

    kept: list[bytes] = []

    def churn() -> None:
        # 1 KiB objects come from malloc (not Python's own arenas). One in ten outlives the rest, as a
        # tenant's row outlives the JSON parsed around it: the heap cannot shrink from its top, and glibc
        # keeps the free pages between the survivors until something trims them.
        made = [bytes(1024) for _ in range(80_000)]
        kept.extend(made[::10])
        made.clear()

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = process.memory_info().rss
    heap.trim()
    after = process.memory_info().rss
    assert before - after > 20 << 20, f"trim gave back {(before - after) >> 10} KiB"
    assert len(kept) == 8_000
