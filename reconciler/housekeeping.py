"""The housekeeper: prunes events, webhook events, idempotency keys and tombstones older than their
retention, every few minutes, in a thread of `fleet up` and `fleet scheduler`.

Why it exists: those records only grow, and nothing else owns them. Two housekeepers at once (two
schedulers of a fleet) are harmless: a prune deletes what is old, in small transactions, and the second
finds less to do. What it must never do: decide what may go (`state.housekeeping` keeps what an unfinished
delete needs, and raises the watch horizon with the tombstones it drops) or prune in one long transaction.
"""

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta

from loguru import logger

from specs import FleetError, PermanentError
from state import Store
from state.housekeeping import Housekeeping, Pruned, Retention

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RETAIN_HELP = (
    "KIND=DURATION, repeatable: how long to keep events (default 30d), webhook-events (30d), idempotency-keys "
    "(24h) and tombstones (7d; a watcher further behind gets 410 Gone and lists again)."
)


def parse_retention(pairs: Sequence[str], flag: str = "--retain") -> Retention:
    """`KIND=DURATION` pairs (`events=30d`, `idempotency_keys=24h`) over the defaults."""
    kinds = {f.name.replace("_", "-"): f.name for f in fields(Retention)}
    retention = Retention()
    for pair in pairs:
        kind, _, value = pair.partition("=")
        name = kinds.get(kind.strip().replace("_", "-"))
        match = re.fullmatch(r"(\d+)([smhd])", value.strip())
        if name is None:
            raise PermanentError(f"{flag}: {kind!r} is not one of {', '.join(sorted(kinds))}")
        if match is None:
            raise PermanentError(f"{flag}: {value!r} must be a whole number of s, m, h or d (e.g. 30d)")
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        if seconds <= 0:
            raise PermanentError(f"{flag}: {kind} must be kept for some time, not 0")
        retention = replace(retention, **{name: timedelta(seconds=seconds)})
    return retention


@dataclass(frozen=True)
class HousekeeperConfig:
    retention: Retention = field(default_factory=Retention)
    interval_seconds: float = 300.0


class Housekeeper:
    def __init__(
        self, store: Store, config: HousekeeperConfig | None = None, *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config or HousekeeperConfig()
        self.housekeeping = Housekeeping(store)
        self._now = now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> Pruned:
        pruned = self.housekeeping.prune(self.config.retention, now=self._now())
        if pruned.total:
            logger.bind(
                events=pruned.events, webhook_events=pruned.webhook_events, idempotency_keys=pruned.idempotency_keys,
                tombstones=pruned.tombstones, horizon=pruned.horizon,
            ).info("Pruned old records")
        return pruned

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except FleetError as error:
                logger.warning("Housekeeping failed, will try again: {}", error)
            self._stop.wait(self.config.interval_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = ["RETAIN_HELP", "Housekeeper", "HousekeeperConfig", "parse_retention"]
