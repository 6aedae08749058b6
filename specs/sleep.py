"""Sleep: after how long without a visitor a tenant's container is stopped, to start again on the next one.

`after` is a duration ("90s", "15m", "2h", "1d", or a number of seconds) or "never" (null). A tenant that
leaves `sleep` out keeps its template's (or its plan's) rule. Stored as whole seconds; 0 is "never" on a
tenant (so it can say never where its template says otherwise) and NULL "the template's default".
"""

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

SLEEP_AFTER_MIN = 1  # seconds; short enough for a test to watch a tenant fall asleep
SLEEP_AFTER_MAX = 30 * 24 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PATTERN = r"^([1-9][0-9]{0,6})(s|m|h|d)$"
_DURATION = re.compile(DURATION_PATTERN)
RULE = "must be a duration from 1s to 30d (e.g. 90s, 15m, 2h, 1d) or never"


def parse_duration(value: Any) -> int | None:
    """Seconds, or None for never; ValueError naming the rule otherwise."""
    if value is None or value == "never":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        raise ValueError(RULE)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(RULE)
    if not SLEEP_AFTER_MIN <= seconds <= SLEEP_AFTER_MAX:
        raise ValueError(RULE)
    return seconds


def format_duration(seconds: int | None) -> str:
    """The shortest exact form: 900 -> "15m", 90 -> "90s", None -> "never"."""
    if seconds is None:
        return "never"
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "string", "enum": ["never"]},
              {"type": "integer", "minimum": SLEEP_AFTER_MIN, "maximum": SLEEP_AFTER_MAX}, {"type": "null"}],
    "description": "Idle time before the container is stopped: a duration from 1s to 30d (90s, 15m, 2h, 1d), "
    "a number of seconds, or never (null)",
}
SleepAfter = Annotated[
    int | None, BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(_SCHEMA, mode="validation"),
    WithJsonSchema({"type": "string", "description": "a duration (15m) or never"}, mode="serialization"),
]


class Sleep(BaseModel):
    """When the gateway has seen no request and no open connection to the tenant for `after`, its container
    is stopped (filesystem, address, limits and firewall stay) and its phase is Sleeping; the next request
    through the gateway starts it again and is answered as if it had never slept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: SleepAfter = None

    @classmethod
    def from_column(cls, seconds: int | None) -> "Sleep":
        return cls.model_construct(after=seconds or None)
