"""Where the store and the data live, from flags, then the environment, then defaults.

Imported by every command, `fleet --help` too: it must not import the store (SQLAlchemy) or the specs at
its top; `open_store` does, for the commands that open one."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.cli.remote import Remote
    from state import Store

DB_HELP = "Store URL (sqlite:///PATH or postgresql://USER@HOST/DB). Default: FLEET_DB, else DATA_DIR/fleet.db."
DATA_DIR_HELP = "Default: FLEET_DATA_DIR, else /var/lib/fleet (root) or ~/.local/share/fleet."
SERVER_HELP = (
    "The Fleet API (http://HOST:PORT of `fleet up` or `fleet api`) to send get, apply, delete, pause and resume "
    "to, instead of opening the store. Default: FLEET_SERVER. The token: FLEET_TOKEN or --token-file."
)
TOKEN_FILE_HELP = "A file holding the API token for --server (default: FLEET_TOKEN)."


def this_node() -> str:
    """This machine's node name by default: its short host name, lower case (`web-3.example.com` -> `web-3`)."""
    import socket

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
    server: str | None = None
    token_file: Path | None = None

    def remote(self) -> "Remote | None":
        """The API to talk to instead of the store: `--server`, else FLEET_SERVER unless `--db` was given."""
        from reconciler.documents import BadInput

        if self.server and self.db:
            raise BadInput("--server and --db: give one (the API or the store), not both")
        server = self.server or (None if self.db else os.environ.get("FLEET_SERVER"))
        if not server:
            return None
        from reconciler.cli.remote import Remote

        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as error:
                raise BadInput(f"--token-file: cannot read {self.token_file}: {error.strerror}") from error
        else:
            token = os.environ.get("FLEET_TOKEN", "").strip()
        return Remote(server.rstrip("/"), token or None)

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
        from reconciler.documents import BadInput
        from specs import PermanentError
        from state import Store

        if self.server:
            raise BadInput("--server: this command works on the store; give --db instead (over the API: get, "
                           "apply, delete, pause, resume)")
        url = self.db_url
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.exists():
                hint = (" (FLEET_SERVER is set: over the API, get, apply, delete, pause and resume work)"
                        if os.environ.get("FLEET_SERVER") else "")
                raise PermanentError(
                    f"no store at {path}; start one with `fleet up`, or point at it with --db URL or FLEET_DB{hint}"
                )
        return Store(url)
