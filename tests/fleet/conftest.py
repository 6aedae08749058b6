"""A fleet as a user runs one: a private PostgreSQL, `fleet agent` and `fleet scheduler` as separate
processes, tenants inserted with psql. Every process a test starts is stopped (or killed) at its end."""

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import wait_for
from tests.postgres import PostgresServer

FLEET = str(Path(sys.executable).parent / "fleet")


@dataclass
class Cluster:
    server: PostgresServer
    database: str
    data_dir: Path
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url(self.database)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        env["FLEET_DB"] = self.url
        env["FLEET_DATA_DIR"] = str(self.data_dir)
        return env

    def _spawn(self, key: str, args: list[str], ready: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([FLEET, *args], env=self.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   text=True)
        lines: list[str] = []
        self.logs[key] = lines
        assert process.stderr is not None
        stream = process.stderr
        threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True).start()
        self.processes[key] = process
        wait_for(lambda: any(ready in line for line in lines) or process.poll() is not None, timeout=60,
                 what=f"{key} to start")
        assert process.poll() is None, "".join(lines[-30:])
        return process

    def agent(self, node: str, *args: str) -> subprocess.Popen[str]:
        return self._spawn(f"agent-{node}", ["agent", "--node", node, "--driver", "fake", "--lease-seconds", "3",
                                             "--resync-seconds", "2", "--workers", "4", *args], "Fleet agent is up")

    def scheduler(self, key: str = "scheduler", *args: str) -> subprocess.Popen[str]:
        return self._spawn(key, ["scheduler", "--lease-seconds", "3", "--interval-seconds", "0.5", *args],
                           "Fleet scheduler is up")

    def kill(self, key: str) -> None:
        process = self.processes.pop(key)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.processes.clear()

    def psql(self, sql: str) -> str:
        result = self.server.psql(self.database, sql)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return list(conn.execute(sql).fetchall())

    def phases(self) -> dict[str, int]:
        return {phase or "Pending": count for phase, count in self.rows(
            "SELECT s.phase, count(*) FROM tenants t LEFT JOIN tenant_status s ON s.name = t.name GROUP BY 1")}

    def running(self) -> int:
        return self.phases().get("Running", 0)

    def per_node(self) -> dict[str, int]:
        return {node: count for node, count in self.rows(
            "SELECT node, count(*) FROM tenants WHERE node IS NOT NULL GROUP BY node")}

    def fleet(self, *args: str) -> str:
        result = subprocess.run([FLEET, *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in json.loads(self.fleet("nodes", "-o", "json"))}

    def ready_conditions(self, node: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, conditions in self.rows(
            "SELECT t.name, s.conditions FROM tenants t JOIN tenant_status s ON s.name = t.name"
            f" WHERE t.node = '{node}'"
        ):
            ready = [c for c in json.loads(conditions) if c["type"] == "Ready"]
            found[name] = ready[0]["status"] if ready else "missing"
        return found


@pytest.fixture
def cluster(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    database = postgres_server.create_database()
    made = Cluster(postgres_server, database, tmp_path / "data")
    try:
        yield made
    finally:
        made.stop_all()
        postgres_server.drop_database(database)
