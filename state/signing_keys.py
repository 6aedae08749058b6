"""Claim signing keys: the secrets that sign tenant claims, rotated and revoked without a restart.

The newest key that is neither retired nor revoked signs; retired keys still verify; revoked keys verify
nothing.
"""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from specs import NotFound
from state.access_schema import SIGNING_KEYS
from state.columns import utc
from state.session import Session


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: str
    created_at: datetime | None
    retired_at: datetime | None
    revoked_at: datetime | None

    @property
    def usable(self) -> bool:
        return self.revoked_at is None



def _key_from_row(row: Any) -> SigningKey:
    return SigningKey(row.kid, row.secret, utc(row.created_at), utc(row.retired_at), utc(row.revoked_at))


class SigningKeys:
    """Signing keys over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def signing_keys(self) -> list[SigningKey]:
        """Every key, newest first (revoked ones included, so a claim they signed can be refused)."""
        with self.session.read() as conn:
            rows = conn.execute(select(SIGNING_KEYS).order_by(SIGNING_KEYS.c.created_at.desc(),
                                                              SIGNING_KEYS.c.kid.desc())).all()
        return [_key_from_row(row) for row in rows]

    def rotate_signing_key(self) -> SigningKey:
        """A new active key; the previous ones are retired: they still verify claims, sign no new ones."""
        kid = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
        with self.session.write() as conn:
            conn.execute(
                SIGNING_KEYS.update().where(SIGNING_KEYS.c.retired_at.is_(None)).values(
                    retired_at=func.current_timestamp()
                )
            )
            conn.execute(SIGNING_KEYS.insert().values(kid=kid, secret=secrets.token_urlsafe(48)))
        return next(key for key in self.signing_keys() if key.kid == kid)

    def active_signing_key(self) -> SigningKey:
        """The key new claims are signed with; made on first use."""
        for key in self.signing_keys():
            if key.retired_at is None and key.revoked_at is None:
                return key
        return self.rotate_signing_key()

    def revoke_signing_key(self, kid: str) -> None:
        """Claims signed with this key are refused from now on."""
        with self.session.write() as conn:
            result = conn.execute(
                SIGNING_KEYS.update().where(SIGNING_KEYS.c.kid == kid).values(
                    revoked_at=func.current_timestamp(), retired_at=func.coalesce(SIGNING_KEYS.c.retired_at,
                                                                                 func.current_timestamp())
                )
            )
            if result.rowcount == 0:
                raise NotFound(f"signing key {kid} not found")
