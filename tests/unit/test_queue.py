import random
import threading

import pytest

from reconciler.clock import ManualClock
from reconciler.queue import ExponentialBackoff, MaxOf, TokenBucket, WorkQueue


def queue_with(clock: ManualClock) -> WorkQueue:
    limiter = MaxOf(ExponentialBackoff(rng=random.Random(1)), TokenBucket(qps=10, burst=2, clock=clock))
    return WorkQueue(clock=clock, rate_limiter=limiter)


def test_a_key_added_many_times_is_processed_once() -> None:
    queue = WorkQueue(clock=ManualClock())
    for _ in range(5):
        queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    assert queue.get(timeout=0) is None


def test_a_key_added_while_processing_is_processed_again_after_done_not_before() -> None:
    queue = WorkQueue(clock=ManualClock())
    queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.add("a")
    assert queue.get(timeout=0) is None, "never handed to a second worker while the first has it"
    queue.done("a")
    assert queue.get(timeout=0) == "a"


def test_backoff_doubles_per_failure_with_bounded_jitter_and_resets_on_forget() -> None:
    backoff = ExponentialBackoff(base=0.005, cap=1.0, jitter=0.1, rng=random.Random(7))
    delays = [backoff.when("a") for _ in range(10)]
    for n, delay in enumerate(delays):
        expected = min(1.0, 0.005 * 2**n)
        assert expected <= delay <= min(1.0, expected * 1.1)
    assert backoff.retries("a") == 10
    backoff.forget("a")
    assert backoff.retries("a") == 0
    assert backoff.when("a") <= 0.0055


def test_the_global_bucket_spaces_out_a_retry_storm() -> None:
    clock = ManualClock()
    bucket = TokenBucket(qps=10, burst=2, clock=clock)
    waits = [bucket.when(f"k{i}") for i in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.1, 0.2, 0.3])


def test_a_rate_limited_key_comes_back_only_when_its_delay_has_passed() -> None:
    clock = ManualClock()
    queue = queue_with(clock)
    for _ in range(3):
        queue.add_rate_limited("a")  # third failure: base * 4 = 20 ms, or the bucket's debt
    assert queue.get(timeout=0) is None
    clock.advance(10)
    assert queue.get(timeout=0) == "a"


def test_an_earlier_deadline_wins_over_a_later_one() -> None:
    clock = ManualClock()
    queue = WorkQueue(clock=clock)
    queue.add_after("a", 10)
    queue.add_after("a", 1)
    clock.advance(1)
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    clock.advance(20)
    assert queue.get(timeout=0) is None


def test_get_blocks_until_a_key_arrives_from_another_thread() -> None:
    queue = WorkQueue()
    got: list[str | None] = []
    thread = threading.Thread(target=lambda: got.append(queue.get(timeout=5)))
    thread.start()
    queue.add("late")
    thread.join(5)
    assert got == ["late"]


def test_shutdown_wakes_waiting_workers() -> None:
    queue = WorkQueue()
    got: list[str | None] = ["sentinel"]
    thread = threading.Thread(target=lambda: got.__setitem__(0, queue.get()))
    thread.start()
    queue.shutdown()
    thread.join(5)
    assert not thread.is_alive() and got == [None]


def test_the_wait_reported_is_from_when_a_key_became_due_to_when_a_worker_took_it() -> None:
    clock = ManualClock()
    waits: list[float] = []
    queue = WorkQueue(clock=clock, on_wait=waits.append)
    queue.add("a")
    clock.advance(2.0)
    assert queue.get(timeout=0) == "a"
    queue.add_after("b", 5.0)  # a retry: due in 5 s, its wait counts from then
    clock.advance(6.0)
    queue.add("a")  # added while processed: due again only once done
    clock.advance(1.0)
    queue.done("a")
    clock.advance(0.5)
    assert {queue.get(timeout=0), queue.get(timeout=0)} == {"a", "b"}
    assert waits[0] == 2.0 and sorted(waits[1:]) == [0.5, 2.5]  # b waited from its due time, a from done
