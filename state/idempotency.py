"""Idempotency keys: the first answer to a request sent with an `Idempotency-Key`, kept for its replays.

A request claims its key before it is answered (`claim_key`), so a concurrent replay waits for that answer
instead of running the request twice; a claim of a request that died is taken over after a while.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, and_, func, select

from state.access_schema import IDEMPOTENCY_KEYS
from state.session import Session

IN_PROGRESS = 0  # the status code of a key claimed by a request still being answered


@dataclass(frozen=True)
class StoredResponse:
    request_hash: str
    status_code: int
    body: str

    @property
    def in_progress(self) -> bool:
        """The key is claimed by a request that has not answered yet."""
        return self.status_code == IN_PROGRESS


class IdempotencyKeys:
    """Idempotency keys over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def stored_response(self, *, principal: str, key: str) -> StoredResponse | None:
        with self.session.read() as conn:
            row = conn.execute(
                select(IDEMPOTENCY_KEYS).where(
                    and_(IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key)
                )
            ).first()
        return None if row is None else StoredResponse(row.request_hash, row.status_code, row.response_body)

    def claim_key(
        self, *, principal: str, key: str, request_hash: str, stale_after: timedelta = timedelta(seconds=60)
    ) -> StoredResponse | None:
        """Claim a key before answering the request: None when this request now holds it (answer, then
        `store_response` or `release_key`); otherwise what the key holds, an answer or a claim in progress.
        A claim older than `stale_after` is of a request that died without answering: it is taken over.

        Looks before it writes: a request waiting on another's claim then only reads, and never queues on
        SQLite's write lock behind the very request it waits for."""
        existing = self.stored_response(principal=principal, key=key)
        if existing is None:
            with self.session.write() as conn:
                claimed = self._insert_key(conn, principal, key, StoredResponse(request_hash, IN_PROGRESS, ""))
            if claimed:
                return None
            existing = self.stored_response(principal=principal, key=key)  # claimed by a concurrent request
            if existing is None:  # and released meanwhile: look again on the next call
                return StoredResponse(request_hash, IN_PROGRESS, "")
        if existing.in_progress and existing.request_hash == request_hash:
            with self.session.write() as conn:
                taken = conn.execute(
                    IDEMPOTENCY_KEYS.update()
                    .where(and_(IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key,
                                IDEMPOTENCY_KEYS.c.status_code == IN_PROGRESS,
                                IDEMPOTENCY_KEYS.c.created_at < datetime.now(UTC) - stale_after))
                    .values(created_at=func.current_timestamp())
                ).rowcount
            if taken:
                return None
        return existing

    def release_key(self, *, principal: str, key: str) -> None:
        """Give up a claim without an answer (the request failed in a way worth retrying)."""
        with self.session.write() as conn:
            conn.execute(IDEMPOTENCY_KEYS.delete().where(and_(
                IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key,
                IDEMPOTENCY_KEYS.c.status_code == IN_PROGRESS)))

    def store_response(self, *, principal: str, key: str, response: StoredResponse) -> StoredResponse:
        """Keep the first answer for a key (filling this request's claim); if another request stored one
        first, return that one."""
        with self.session.write() as conn:
            filled = conn.execute(
                IDEMPOTENCY_KEYS.update()
                .where(and_(IDEMPOTENCY_KEYS.c.principal == principal, IDEMPOTENCY_KEYS.c.key == key,
                            IDEMPOTENCY_KEYS.c.status_code == IN_PROGRESS,
                            IDEMPOTENCY_KEYS.c.request_hash == response.request_hash))
                .values(status_code=response.status_code, response_body=response.body)
            ).rowcount
            if filled or self._insert_key(conn, principal, key, response):
                return response
        first = self.stored_response(principal=principal, key=key)
        assert first is not None
        return first

    def _insert_key(self, conn: Connection, principal: str, key: str, response: StoredResponse) -> bool:
        """Insert unless the key is there (either engine's ON CONFLICT DO NOTHING); True when inserted."""
        return bool(conn.execute(
            self.session.dialect.insert(IDEMPOTENCY_KEYS)
            .values(principal=principal, key=key, request_hash=response.request_hash,
                    status_code=response.status_code, response_body=response.body)
            .on_conflict_do_nothing(index_elements=["principal", "key"])
        ).rowcount)

