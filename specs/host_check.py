"""One finding of `fleet doctor`: what was checked on the host, whether it passed, and what to do if not."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class CheckStatus(StrEnum):
    OK = "ok"
    WARNING = "warning"  # works, but something is off (e.g. KSM off: no memory merging)
    FAILED = "failed"  # the real driver cannot run until it is fixed


class HostCheck(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # what was checked, e.g. "tool btrfs", "cgroups", "pool"
    status: CheckStatus
    detail: str = ""  # what was found (a version, a path, a number)
    fix: str = ""  # what to run or change, when it is not ok
