"""Backends that make tenants real on a host, behind one protocol.

The only code that touches the host. Drivers import `specs` and nothing else of the project: they never
read the store, so what they report is what the host shows.
"""

from drivers.base import Driver
from drivers.exec_process import ExecProcess, ExecRequest
from drivers.heap import limit_arenas as limit_heap_arenas
from drivers.heap import trim as trim_heap
from drivers.registry import available_drivers, create_driver, host_checks, host_problems

__all__ = [
    "Driver", "ExecProcess", "ExecRequest", "available_drivers", "create_driver", "host_checks", "host_problems",
    "limit_heap_arenas", "trim_heap",
]
