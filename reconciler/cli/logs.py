"""Structured log lines for people: the message, then the fields (tenant=..., node=..., ms=...).

Loguru is imported only where it is used: a short command that never logs (`fleet get tenants` on an up
to date store) would otherwise spend a tenth of its run time importing it (and asyncio beneath it).
"""

import sys
from types import ModuleType
from typing import Any


def _format(record: Any) -> str:
    fields = " ".join(f"{key}={value}" for key, value in record["extra"].items())
    fields = fields.replace("{", "{{").replace("}", "}}")
    return "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}" + (f"  {fields}" if fields else "") + "\n{exception}"


def configure(level: str = "INFO", *, json_lines: bool = False) -> None:
    from loguru import logger

    logger.remove()
    if json_lines:
        logger.add(sys.stderr, level=level.upper(), serialize=True)
    else:
        logger.add(sys.stderr, level=level.upper(), format=_format)


def _quiet_now() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format=_format)


class _QuietWhenImported:
    """A finder that finds nothing itself: when loguru is first imported, it lets the usual finders load
    it and quiets it as soon as it has run, before any module can log through it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "loguru":
            return None
        sys.meta_path.remove(self)
        spec = next((found for finder in sys.meta_path if (found := finder.find_spec(name, path, target))), None)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _quiet_now()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def quiet() -> None:
    """Short-lived commands print results, not logs (warnings still show)."""
    if "loguru" in sys.modules:
        _quiet_now()
    elif not any(isinstance(finder, _QuietWhenImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietWhenImported())
