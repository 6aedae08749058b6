"""Small file helpers shared by the nspawn driver's modules."""

from __future__ import annotations

import os
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # a file or subvolume being made: never complete, deleted on sight


def write_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a temporary beside it, fsync'd, then renamed over it."""
    temporary = path.with_name(f"{TEMP_PREFIX}{path.name}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, path)
