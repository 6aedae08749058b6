"""A private PostgreSQL server for tests: initdb + pg_ctl into a temporary directory, on a free loopback
port, as the `postgres` user when the tests run as root. Started once a session, stopped and removed at
the end; each test gets its own database."""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg


def postgres_bin_dir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def missing_reason() -> str | None:
    """Why a private server cannot start here, or None when it can."""
    if postgres_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no postgres user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    bin_dir: Path
    base: Path
    port: int

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    @classmethod
    def start(cls) -> "PostgresServer":
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None
        base = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(base, entry.pw_uid, entry.pw_gid)
        server = cls(bin_dir=bin_dir, base=base, port=_free_port())
        init = server._as_postgres("initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                   "--no-sync")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr}")
        server.pg_ctl_start()
        return server

    def pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        started = self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-o", options,
                                    "-w", "start")
        if started.returncode != 0:
            log = (self.base / "log").read_text() if (self.base / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr} {log}")

    def pg_ctl_stop(self, mode: str = "fast") -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (fast: in-flight transactions are cut off) and start again on the same port."""
        self.pg_ctl_stop("fast")
        self.pg_ctl_start()

    def create_database(self) -> str:
        name = f"fleet_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def psql(self, database: str, sql: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """SQL the way an operator or a billing engineer would run it: the psql client, a separate process."""
        return subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", self.url(database), "-c", sql],
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def stop(self) -> None:
        self.pg_ctl_stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
