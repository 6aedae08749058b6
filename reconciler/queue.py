"""A stingy, rate-limited work queue of tenant names (client-go's workqueue, in Python).

Guarantees, which a property test checks:
- a key is never handed to two workers at once;
- a key added many times before a worker takes it is processed once;
- a key added while it is being processed is processed once more after `done`.

Retries are the rate limiter's job: `add_rate_limited` asks it how long to wait (per-key exponential
backoff with jitter, bounded by a global token bucket). Time is injected.
"""

import heapq
import itertools
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from reconciler.clock import Clock, MonotonicClock


class RateLimiter(Protocol):
    def when(self, key: str) -> float:
        """Seconds to wait before the key's next try; counts one more failure."""
        ...

    def forget(self, key: str) -> None: ...

    def retries(self, key: str) -> int: ...


class ExponentialBackoff:
    """base * 2^failures, capped, with up to `jitter` of it added at random so retries spread out."""

    def __init__(
        self, base: float = 0.005, cap: float = 300.0, jitter: float = 0.1, rng: random.Random | None = None
    ) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self._rng = rng or random.Random()
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def when(self, key: str) -> float:
        with self._lock:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = min(self.cap, self.base * (2 ** min(failures, 64)))
            return float(min(self.cap, delay * (1 + self.jitter * self._rng.random())))

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def retries(self, key: str) -> int:
        with self._lock:
            return self._failures.get(key, 0)


class TokenBucket:
    """A global limit on retries: `qps` tokens a second, `burst` at most. Keeps a failure storm from
    turning into a retry storm against the host."""

    def __init__(self, qps: float = 50.0, burst: int = 500, clock: Clock | None = None) -> None:
        self.qps, self.burst = qps, burst
        self._clock = clock or MonotonicClock()
        self._tokens = float(burst)
        self._last = self._clock.now()
        self._lock = threading.Lock()

    def when(self, key: str) -> float:
        with self._lock:
            now = self._clock.now()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1  # reserve, possibly into debt: the debt is the wait
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, key: str) -> None:
        return None

    def retries(self, key: str) -> int:
        return 0


class MaxOf:
    """The longest wait any of its limiters asks for."""

    def __init__(self, *limiters: RateLimiter) -> None:
        self.limiters = limiters

    def when(self, key: str) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: str) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def retries(self, key: str) -> int:
        return max(limiter.retries(key) for limiter in self.limiters)


def default_rate_limiter(clock: Clock | None = None, rng: random.Random | None = None) -> RateLimiter:
    return MaxOf(ExponentialBackoff(rng=rng), TokenBucket(clock=clock))


class WorkQueue:
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rate_limiter: RateLimiter | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """`on_wait(seconds)` is told, as a worker takes a key, how long it waited in the queue since it
        became due (the queue latency a metric shows)."""
        self.clock = clock or MonotonicClock()
        self.rate_limiter = rate_limiter or default_rate_limiter(self.clock)
        self._on_wait = on_wait
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._queued_at: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._waiting: dict[str, float] = {}  # key -> earliest deadline
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._shutting_down = False

    # -- adding ------------------------------------------------------------------------------------
    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str, due: float | None = None) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._enqueue_locked(key, due)

    def _enqueue_locked(self, key: str, due: float | None = None) -> None:
        self._queue.append(key)
        if self._on_wait is not None:
            self._queued_at[key] = self.clock.now() if due is None else due
        self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            deadline = self.clock.now() + delay
            if key in self._waiting and self._waiting[key] <= deadline:
                return
            self._waiting[key] = deadline
            heapq.heappush(self._heap, (deadline, next(self._sequence), key))
            self._cond.notify()

    def add_rate_limited(self, key: str) -> float:
        delay = self.rate_limiter.when(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self.rate_limiter.forget(key)

    def retries(self, key: str) -> int:
        return self.rate_limiter.retries(key)

    # -- taking ------------------------------------------------------------------------------------
    def _promote_locked(self) -> float | None:
        """Move due delayed keys into the queue; return seconds until the next one is due."""
        now = self.clock.now()
        while self._heap:
            deadline, _, key = self._heap[0]
            if self._waiting.get(key) != deadline:
                heapq.heappop(self._heap)  # superseded by an earlier deadline
                continue
            if deadline > now:
                return deadline - now
            heapq.heappop(self._heap)
            del self._waiting[key]
            self._add_locked(key, deadline)
        return None

    def get(self, timeout: float | None = None) -> str | None:
        """The next key to process, or None on shutdown or when `timeout` passes with nothing due."""
        with self._cond:
            remaining = timeout
            while True:
                if self._shutting_down:
                    return None
                next_due = self._promote_locked()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    if self._on_wait is not None:
                        self._on_wait(max(0.0, self.clock.now() - self._queued_at.pop(key, self.clock.now())))
                    return key
                if remaining is not None and remaining <= 0:
                    return None
                wait = next_due if remaining is None else min(remaining, next_due or remaining)
                started = self.clock.now()
                self._cond.wait(wait if wait is None else max(wait, 0.0005))
                if remaining is not None:
                    remaining -= max(self.clock.now() - started, wait or 0.0)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._enqueue_locked(key)

    def shutdown(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    # -- looking -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def processing(self) -> int:
        with self._cond:
            return len(self._processing)

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._processing and not self._waiting
