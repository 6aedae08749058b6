"""The work queue's promises under arbitrary interleavings of adds, gets and dones, and under threads."""

import threading
import time
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.clock import ManualClock
from reconciler.queue import WorkQueue

keys = st.sampled_from(["a", "b", "c", "d"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), keys),
        st.tuples(st.just("add_after"), keys),
        st.tuples(st.just("get"), st.none()),
        st.tuples(st.just("done"), st.none()),
        st.tuples(st.just("tick"), st.none()),
    ),
    max_size=60,
)


@given(operations)
def test_no_key_is_held_twice_and_every_add_is_followed_by_a_processing(ops: list[tuple[str, str | None]]) -> None:
    clock = ManualClock()
    queue = WorkQueue(clock=clock)
    held: list[str] = []
    # A key added (not delayed) must be handed out at least once after the add: track pending adds.
    owed: set[str] = set()
    for op, key in ops:
        if op == "add" and key:
            queue.add(key)
            owed.add(key)
        elif op == "add_after" and key:
            queue.add_after(key, 1.0)
            owed.add(key)
        elif op == "get":
            got = queue.get(timeout=0)
            if got is not None:
                assert got not in held, f"{got} handed out while still being processed"
                held.append(got)
                owed.discard(got)
        elif op == "done" and held:
            queue.done(held.pop(0))
        elif op == "tick":
            clock.advance(1.0)
    # Finish everything in flight; every owed key must come out.
    for key in held:
        queue.done(key)
    clock.advance(10)
    while (got := queue.get(timeout=0)) is not None:
        owed.discard(got)
        queue.done(got)
    assert owed == set()


@settings(max_examples=20, deadline=None)
@given(st.lists(keys, min_size=1, max_size=200))
def test_concurrent_workers_never_process_one_key_at_once(adds: list[str]) -> None:
    queue = WorkQueue()
    active: Counter[str] = Counter()
    violations: list[str] = []
    processed: Counter[str] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        while (key := queue.get(timeout=0.05)) is not None:
            with lock:
                active[key] += 1
                if active[key] > 1:
                    violations.append(key)
            time.sleep(0.0002)  # simulated work: widens the window in which a double hand-out would show
            with lock:
                active[key] -= 1
                processed[key] += 1
            queue.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for key in adds:
        queue.add(key)
    for thread in threads:
        thread.join(10)
    # Late adds may land after the workers gave up: drain them the same way.
    worker()
    assert violations == []
    assert set(processed) == set(adds)
