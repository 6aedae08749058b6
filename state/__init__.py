"""The store: desired state, reported status, templates and events, in SQL.

The only package that speaks SQL. It imports `specs` and nothing else of the project; it never touches
the host (that is `drivers/`).
"""

from state.errors import AlreadyExists, Conflict, InvalidRecord, TenantOwned
from state.records import ApplyOutcome, ApplyResult, Change, DesiredRecord, TenantPage
from state.store import Store

__all__ = [
    "AlreadyExists",
    "ApplyOutcome",
    "ApplyResult",
    "Change",
    "Conflict",
    "DesiredRecord",
    "InvalidRecord",
    "Store",
    "TenantOwned",
    "TenantPage",
]
