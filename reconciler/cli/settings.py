"""Where the store and the data live, from flags, then the environment, then defaults.

Imported by every command, `fleet --help` too: it must not import the store (SQLAlchemy) or the specs at
its top; `open_store` does, for the commands that open one."""

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state import Store

DB_HELP = "Store URL (sqlite:///PATH or postgresql://USER@HOST/DB). Default: FLEET_DB, else DATA_DIR/fleet.db."
DATA_DIR_HELP = "Default: FLEET_DATA_DIR, else /var/lib/fleet (root) or ~/.local/share/fleet."


def this_node() -> str:
    """This machine's node name by default: its short host name, lower case (`web-3.example.com` -> `web-3`)."""
    return socket.gethostname().split(".")[0].lower()


def default_data_dir() -> Path:
    if os.environ.get("FLEET_DATA_DIR"):
        return Path(os.environ["FLEET_DATA_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/fleet")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "fleet"


@dataclass
class Settings:
    db: str | None = None
    data_dir: Path | None = None

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or default_data_dir()

    @property
    def db_url(self) -> str:
        if self.db:
            return self.db
        if os.environ.get("FLEET_DB"):
            return os.environ["FLEET_DB"]
        return f"sqlite:///{self.resolved_data_dir / 'fleet.db'}"

    def open_store(self, *, create: bool = False) -> "Store":
        from specs import PermanentError
        from state import Store

        url = self.db_url
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.exists():
                raise PermanentError(
                    f"no store at {path}; start one with `fleet up`, or point at it with --db URL or FLEET_DB"
                )
        return Store(url)
