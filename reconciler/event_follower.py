"""Following the event log by id without losing an event whose transaction commits late.

Why it exists: event ids come from a sequence when a row is inserted, not when its transaction commits. On
PostgreSQL two transactions can take ids 41 and 42 and commit 42 first; a reader that has seen 42 and
goes on "after 42" would never see 41. So the follower keeps a floor (every id at or below it is printed
or given up) and reads after the floor, not after the newest id it printed: the floor moves at once over
ids it has printed without a hole, and over a hole only once the id above it has been printed for
`grace_seconds` (a transaction open that long is not one Fleet makes: its writes are short). Ids printed
above the floor are remembered, so a re-read prints nothing twice. Holes that never fill (a rolled-back
insert, another tenant's event when one tenant is followed) cost a re-read of at most `grace_seconds` of
events. What it must never do: read the store itself (it is handed `read`), or print an event twice.
"""

from collections import deque
from collections.abc import Callable, Sequence

from specs import Event

GRACE_SECONDS = 30.0


class EventFollower:
    """Hands out each event of the log once, in the order the reads find them. `read(after_id)` returns
    the events with an id above `after_id`, oldest first."""

    def __init__(
        self,
        read: Callable[[int], Sequence[Event]],
        clock: Callable[[], float],
        *,
        shown: Sequence[Event] = (),
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        """`shown`: the events already printed (the newest few, oldest first); the follow goes on from the
        first of them, so one of their holes that fills later is still printed."""
        self._read = read
        self._clock = clock
        self.grace_seconds = grace_seconds
        ids = [event.id for event in shown if event.id is not None]
        self.floor = min(ids) - 1 if ids else 0
        self._printed: set[int] = set(ids)
        now = clock()
        self._recent: deque[tuple[float, int]] = deque((now, event_id) for event_id in sorted(ids))
        self._advance(now)

    def poll(self) -> list[Event]:
        """The events not handed out yet, as one read after the floor finds them."""
        now = self._clock()
        self._advance(now)
        new: list[Event] = []
        after = self.floor
        # Page on to the end: a read is a batch, and one full of events printed already (a busy log within
        # the grace) must not hide the new ones behind it.
        while batch := [event for event in self._read(after) if event.id is not None and event.id > after]:
            new += [event for event in batch if event.id not in self._printed]
            after = max(event.id for event in batch if event.id is not None)
        for event in new:
            assert event.id is not None
            self._printed.add(event.id)
            self._recent.append((now, event.id))
        self._advance(now)
        return new

    def _advance(self, now: float) -> None:
        # Over a hole once the id above it has waited out the grace: its transaction is given up on.
        waited = self.floor
        while self._recent and now - self._recent[0][0] >= self.grace_seconds:
            waited = max(waited, self._recent.popleft()[1])
        if waited > self.floor:
            self.floor = waited
            self._printed = {printed for printed in self._printed if printed > waited}
        # Over ids printed without a hole below them, at once: nothing can commit in between.
        while self.floor + 1 in self._printed:
            self.floor += 1
            self._printed.discard(self.floor)


__all__ = ["GRACE_SECONDS", "EventFollower"]
