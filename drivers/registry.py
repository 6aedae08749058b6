"""Driver names to classes. Modules load lazily so a host without a backend's tools can run the others."""

import importlib
from typing import Any

from drivers.base import Driver
from specs import PermanentError

_DRIVERS: dict[str, str] = {
    "fake": "drivers.fake:FakeDriver",
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
    module_name, class_name = target.split(":")
    driver_class = getattr(importlib.import_module(module_name), class_name)
    driver: Driver = driver_class(**options)
    return driver
