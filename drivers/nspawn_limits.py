"""The limits a stopped nspawn tenant starts with: one small file per tenant in the driver's state directory.

Why a file: a stopped (sleeping) tenant gives its cgroups back to the kernel (seven v1 directories cost
~127 KiB of kernel memory per tenant, measured: docs/benchmarks.md), so its limits must live somewhere while
it has none. `apply_resources` writes this record (and the cgroups when the container runs), `start`
creates the cgroups from it before the container's first process exists, and `inspect` reports it as the
limits of a stopped tenant: they are what the kernel enforces from the next start on.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import ValidationError

from specs import Resources, validate_name


class LimitsRecord:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "limits"

    def path(self, tenant: str) -> Path:
        return self.directory / f"{validate_name(tenant)}.json"

    def save(self, tenant: str, resources: Resources) -> None:
        """Atomically (a crash leaves the old record or the new one, never half of one)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(tenant)
        scratch = target.with_suffix(".tmp")
        with open(scratch, "w") as handle:
            handle.write(resources.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())  # a power cut must not leave an empty record (the tenant could not start)
        os.replace(scratch, target)

    def load(self, tenant: str) -> Resources | None:
        """None when there is no record or it does not parse (the next apply writes it again)."""
        try:
            return Resources.model_validate_json(self.path(tenant).read_text())
        except (OSError, ValidationError, ValueError):
            return None

    def remove(self, tenant: str) -> list[str]:
        removed = []
        for path in (self.path(tenant), self.path(tenant).with_suffix(".tmp")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(f"limits record {path}")
        return removed
