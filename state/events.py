"""The append-only event log: what happened to each tenant, written with the change it explains.

Events are appended in the transaction of the write they explain (a binding and its `Scheduled` event
commit together), so `append_events` takes the caller's connection. Triggers refuse updates and deletes of
events except the pruning in `state.housekeeping`.
"""

import json
from collections.abc import Sequence

from sqlalchemy import Connection, select

from specs import Event
from state.columns import utc
from state.schema import EVENTS
from state.session import Session

_INSERT_EVENTS = EVENTS.insert()


def append_events(conn: Connection, events: Sequence[Event]) -> None:
    """Append `events` in the caller's write transaction."""
    if not events:
        return
    conn.execute(
        _INSERT_EVENTS,
        [
            {
                "tenant": e.tenant,
                "node": e.node,
                "type": e.type,
                "reason": e.reason,
                "action": e.action,
                "message": e.message,
                "duration_ms": e.duration_ms,
                "generation": e.generation,
                "details": json.dumps(e.details),
            }
            for e in events
        ],
    )


def read_events(session: Session, *, tenant: str | None = None, after_id: int = 0, limit: int = 100) -> list[Event]:
    """The newest `limit` events after `after_id`, oldest first."""
    query = select(EVENTS).where(EVENTS.c.id > after_id).order_by(EVENTS.c.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(EVENTS.c.tenant == tenant)
    with session.read() as conn:
        rows = conn.execute(query).all()
    return [
        Event(
            id=row.id,
            tenant=row.tenant,
            node=row.node,
            type=row.type,
            reason=row.reason,
            action=row.action,
            message=row.message,
            duration_ms=row.duration_ms,
            generation=row.generation,
            created_at=utc(row.created_at),
            details=json.loads(row.details),
        )
        for row in reversed(rows)
    ]
