"""`fleet events --watch` follows the event log by id: an event whose transaction commits after one with a
higher id (PostgreSQL hands out ids at insert, not at commit) is still printed, and printed once."""

from pathlib import Path

from sqlalchemy import text

from reconciler.event_follower import EventFollower
from specs import Event
from state import Store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def commit(store: Store, *ids: int) -> None:
    """Events with these ids become visible now: as if their transactions took the ids earlier."""
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO events (id, tenant, reason, message, details) "
                          "VALUES (:id, 'acme', 'Step', :message, '{}')"),
                     [{"id": event_id, "message": f"event {event_id}"} for event_id in ids])


def test_an_event_that_commits_after_a_higher_id_is_printed_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    clock = Clock()
    try:
        commit(store, 1, 2)
        shown = store.events(limit=50)
        follower = EventFollower(lambda floor: store.events(after_id=floor, limit=1000), clock, shown=shown)
        commit(store, 4)  # id 3 is taken by a transaction still open
        assert [e.id for e in follower.poll()] == [4]
        clock.now += 5
        assert follower.poll() == [], "nothing twice"
        commit(store, 3)  # ...which commits now, after 4
        clock.now += 5
        assert [e.id for e in follower.poll()] == [3], "the late one is printed, once"
        assert follower.poll() == [] and follower.floor == 4, "the hole is filled: the floor moves on"
        commit(store, 5)
        assert [e.id for e in follower.poll()] == [5]
    finally:
        store.close()


def test_a_hole_that_never_fills_is_given_up_after_the_grace_and_costs_nothing_more() -> None:
    log: dict[int, Event] = {}
    reads: list[int] = []

    def read(floor: int) -> list[Event]:
        reads.append(floor)
        return [log[i] for i in sorted(log) if i > floor]

    def add(*ids: int) -> None:
        log.update({i: Event(id=i, tenant="acme", reason="Step", message=str(i)) for i in ids})

    clock = Clock()
    follower = EventFollower(read, clock, grace_seconds=30)
    add(1, 2, 4)  # 3: a rolled-back insert, never to commit
    assert [e.id for e in follower.poll()] == [1, 2, 4]
    assert follower.floor == 2, "held below the hole"
    clock.now = 29
    add(5)
    assert [e.id for e in follower.poll()] == [5] and follower.floor == 2
    clock.now = 31  # 4 was printed 31 s ago: the hole at 3 is given up, 5 still waits its turn
    assert follower.poll() == []
    assert follower.floor == 5, "past the hole, and over 5 printed without a hole below it"
    add(3)  # later than any transaction Fleet holds: too late, and documented so
    assert follower.poll() == [] and reads[-1] == 5


def test_a_batch_full_of_printed_events_does_not_hide_the_new_ones_behind_it() -> None:
    """A busy log within the grace: the first read after the floor is all events printed already."""
    log = {i: Event(id=i, tenant="acme", reason="Step", message=str(i)) for i in (1, *range(3, 13))}

    def read(floor: int) -> list[Event]:  # a batch of 4, oldest first, as the store's read with a limit
        return [log[i] for i in sorted(log) if i > floor][:4]

    follower = EventFollower(read, Clock(), grace_seconds=30)
    assert [e.id for e in follower.poll()] == [1, *range(3, 13)]
    assert follower.floor == 1, "held below the hole at 2"
    log[13] = Event(id=13, tenant="acme", reason="Step", message="13")
    assert [e.id for e in follower.poll()] == [13]
