"""Run `fleet` as a user would: a real subprocess, a real SQLite file in a temporary data directory; and as
an operator's laptop would (`Laptop`: a token and the API's address, no store)."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

FLEET = str(Path(sys.executable).parent / "fleet")


@dataclass
class Fleet:
    data_dir: Path
    logs: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        env["FLEET_DATA_DIR"] = str(self.data_dir)
        return env

    @property
    def db(self) -> Path:
        return self.data_dir / "fleet.db"

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [FLEET, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"fleet {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def tenant(self, name: str) -> dict[str, Any] | None:
        result = self.run("get", "tenant", name, "-o", "json", check=False)
        if result.returncode != 0:
            return None
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def phase(self, name: str) -> str | None:
        document = self.tenant(name)
        return None if document is None else (document.get("status") or {}).get("phase")

    def wait_phase(self, name: str, phase: str, timeout: float = 15) -> dict[str, Any]:
        wait_for(lambda: self.phase(name) == phase, timeout=timeout, what=f"{name} to be {phase}")
        document = self.tenant(name)
        assert document is not None
        return document


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(data_dir=tmp_path / "data")


@pytest.fixture
def initialised(fleet: Fleet) -> Fleet:
    """A data directory with a store, as `fleet up` leaves it, and no operator running."""
    fleet.data_dir.mkdir(parents=True)
    from state import Store

    Store(f"sqlite:///{fleet.db}").close()
    return fleet


def start_operator(fleet: Fleet, *args: str) -> subprocess.Popen[str]:
    """`fleet up ARGS` in the background; returns once it says it is up (this process, not an earlier one
    whose lines are still in the logs: signalled before its handler is in place, it would not stop cleanly)."""
    earlier = len(fleet.logs)
    process = subprocess.Popen(
        [FLEET, "up", "--resync-seconds", "1", "--log-level", "DEBUG",
         "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0", *args],  # free ports; ARGS may override
        env=fleet.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    assert process.stderr is not None
    stderr = process.stderr
    threading.Thread(target=lambda: fleet.logs.extend(iter(stderr.readline, "")), daemon=True).start()
    wait_for(lambda: any("Fleet is up" in line for line in fleet.logs[earlier:]) or process.poll() is not None,
             timeout=30, what="fleet up to start")
    assert process.poll() is None, "".join(fleet.logs)
    return process


def stop_operator(fleet: Fleet, process: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a user would; it must stop cleanly."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, "".join(fleet.logs[-30:])


@pytest.fixture
def operator(fleet: Fleet) -> Iterator[subprocess.Popen[str]]:
    """`fleet up --driver fake` in the background until the test ends; it must stop cleanly on Ctrl-C."""
    process = start_operator(fleet, "--driver", "fake")
    yield process
    stop_operator(fleet, process)


HEAVY = ("pydantic", "sqlalchemy", "specs", "state", "fastapi", "yaml")  # what a laptop's commands never load


@dataclass
class Laptop:
    """A user with the API's address and a token, and no store: FLEET_DATA_DIR is an empty directory."""

    fleet: Fleet
    api: str
    env: dict[str, str]

    def run(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([FLEET, *args], input=stdin, capture_output=True, text=True,
                                env=env or self.env, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"fleet {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def phase(self, name: str) -> str | None:
        result = self.run("get", "tenant", name, "-o", "json", check=False)
        return json.loads(result.stdout).get("status", {}).get("phase") if result.returncode == 0 else None


@contextlib.contextmanager
def laptop_of(fleet: Fleet, tmp_path: Path, *args: str) -> Iterator[Laptop]:
    """`fleet up --driver fake ARGS` with an operator token, and a laptop with its API's address and that
    token, no store; stopped when the block ends."""
    fleet.data_dir.mkdir(parents=True)
    token = fleet.run("token", "create", "--name", "ops", "--role", "operator").stdout.strip()
    process = start_operator(fleet, "--driver", "fake", *args)
    try:
        line = next(line for line in fleet.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        nowhere = tmp_path / "laptop"
        nowhere.mkdir()
        env = {**fleet.env, "FLEET_DATA_DIR": str(nowhere), "FLEET_SERVER": api, "FLEET_TOKEN": token}
        yield Laptop(fleet, api, env)
    finally:
        stop_operator(fleet, process)


@pytest.fixture
def laptop(fleet: Fleet, tmp_path: Path) -> Iterator[Laptop]:
    with laptop_of(fleet, tmp_path) as on_the_laptop:
        yield on_the_laptop


def tenants(*names: str, cpu: str = "250m") -> str:
    """Tenant documents for `fleet apply -f -`: the first labelled tier gold, the others free."""
    return "---\n".join(
        f"kind: Tenant\nmetadata: {{name: {name}, labels: {{tier: {'gold' if i == 0 else 'free'}}}}}\n"
        f"spec: {{template: base, resources: {{cpu: {cpu}}}}}\n" for i, name in enumerate(names))
