"""The error hierarchy every layer shares.

FleetError
├── TransientError   the world may change: retry with backoff (a busy device, a lost connection)
├── PermanentError   retrying cannot help until the spec changes (unknown template, disk too small)
└── NotFound         the thing is not there; for deletes and inspections this is success

Drivers map host and library errors to these at their edge; the controller decides the outcome of a
reconcile from them in one place.
"""


class FleetError(Exception):
    """Base of every error Fleet raises on purpose."""

    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TransientError(FleetError):
    reason = "TransientError"


class PermanentError(FleetError):
    reason = "PermanentError"


class NotFound(FleetError):
    reason = "NotFound"
