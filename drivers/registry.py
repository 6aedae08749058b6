"""Driver names to classes. Modules load lazily so a host without a backend's tools can run the others
(and a CLI command that needs no driver does not pay for importing one). The only dynamic import in the
project: everything outside `drivers/` reaches a backend through this module and `drivers.base`."""

import importlib
from typing import Any

from drivers.base import Driver
from specs import HostCheck, PermanentError

_PROBLEMS: dict[str, str] = {
    "nspawn": "drivers.nspawn_host:host_problems",
    "lxd": "drivers.lxd_host:host_problems",
}
_CHECKS: dict[str, str] = {
    "nspawn": "drivers.nspawn_doctor:host_checks",
    "lxd": "drivers.lxd_host:host_checks",
}
_DRIVERS: dict[str, str] = {
    "fake": "drivers.fake:FakeDriver",
    "lxd": "drivers.lxd:LxdDriver",
    "nspawn": "drivers.nspawn:NspawnDriver",
}


def available_drivers() -> list[str]:
    return sorted(_DRIVERS)


def create_driver(name: str, **options: Any) -> Driver:
    target = _DRIVERS.get(name)
    if target is None:
        raise PermanentError(
            f"unknown driver {name!r}; choose one of: {', '.join(available_drivers())}", reason="UnknownDriver"
        )
    driver_class = _load(target)
    driver: Driver = driver_class(**options)
    return driver


def host_problems(name: str, **options: Any) -> list[str]:
    """What keeps driver `name` from running on this host, each with how to fix it; empty when it can."""
    if name not in _DRIVERS:
        return [f"this build of Fleet has no {name} driver"]
    target = _PROBLEMS.get(name)
    if target is None:
        return []
    problems: list[str] = _load(target)(**options)
    return problems


def host_checks(name: str, **options: Any) -> list[HostCheck]:
    """Everything `fleet doctor` checks on this host for driver `name`, good and bad, each with its fix.
    A driver with nothing to check on the host (fake) has no checks."""
    target = _CHECKS.get(name)
    if target is None:
        return []
    checks: list[HostCheck] = _load(target)(**options)
    return checks


def _load(target: str) -> Any:
    """`module:attribute`, imported now (the one dynamic import)."""
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)
