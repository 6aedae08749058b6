"""The one place a real driver's host and library errors become `specs` errors (its edge)."""

import functools
import subprocess
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pyroute2 import NetlinkError

from specs import PermanentError, TransientError
from specs.errors import FleetError

P = ParamSpec("P")
R = TypeVar("R")


def at_edge(method: Callable[P, R]) -> Callable[P, R]:
    """Map host errors (files, netlink, tools) to specs errors; a bad name is permanent, the rest may pass."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except FleetError:
            raise
        except ValueError as error:  # a name that is not a DNS label, from validate_name
            raise PermanentError(str(error), reason="InvalidName") from error
        except (OSError, NetlinkError, subprocess.SubprocessError) as error:
            raise TransientError(f"{method.__name__} failed on the host: {error}") from error

    return wrapper
