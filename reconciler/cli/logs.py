"""Structured log lines for people: the message, then the fields (tenant=..., node=..., ms=...)."""

import sys
from typing import Any

from loguru import logger


def _format(record: Any) -> str:
    fields = " ".join(f"{key}={value}" for key, value in record["extra"].items())
    fields = fields.replace("{", "{{").replace("}", "}}")
    return "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}" + (f"  {fields}" if fields else "") + "\n{exception}"


def configure(level: str = "INFO", *, json_lines: bool = False) -> None:
    logger.remove()
    if json_lines:
        logger.add(sys.stderr, level=level.upper(), serialize=True)
    else:
        logger.add(sys.stderr, level=level.upper(), format=_format)


def quiet() -> None:
    """Short-lived commands print results, not logs (warnings still show)."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format=_format)
