"""Where a template's root filesystem comes from, for `Driver.make_template` (import or build)."""

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator

SourceKind = Literal["rootfs", "tarball", "busybox", "debootstrap"]


class TemplateSource(BaseModel):
    """`rootfs` (a directory) and `tarball` (a tar archive) import a tree; `busybox` and `debootstrap` build
    one (a tiny busybox userland serving HTTP on port 80; a Debian `suite` such as bookworm)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SourceKind
    path: Path | None = None
    suite: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.kind in ("rootfs", "tarball") and self.path is None:
            raise ValueError(f"a {self.kind} source needs a path")
        if self.kind == "debootstrap" and not self.suite:
            raise ValueError("a debootstrap source needs a suite, e.g. bookworm")
        return self

    def describe(self) -> str:
        return {"rootfs": f"directory {self.path}", "tarball": f"archive {self.path}", "busybox": "busybox",
                "debootstrap": f"debootstrap {self.suite}"}[self.kind]
