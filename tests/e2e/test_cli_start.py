"""A CLI that answers at once: a command imports only what it needs, and the global options are taken where
people type them (before the command or after it, as kubectl takes its flags)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import FLEET, Fleet

TENANT = "kind: Tenant\nmetadata: {name: acme}\nspec: {template: base}\n"
# What only the servers, the agent and the drivers need; `fleet --help` must not load the store either.
SERVERS_ONLY = {"fastapi", "starlette", "uvicorn", "httpx", "reconciler.agent", "reconciler.controller",
                "reconciler.web", "drivers", "pyroute2", "psutil", "apscheduler", "psycopg", "rich"}
STORE = {"sqlalchemy", "sqlmodel", "state", "specs", "pydantic", "loguru"}


def imported_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module (and each of its parent packages) a `fleet ARGS` process imported, from -X importtime."""
    result = subprocess.run([sys.executable, "-X", "importtime", FLEET, *args], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return {".".join(name.split(".")[:depth]) for name in names for depth in range(1, name.count(".") + 2)}


def test_the_import_check_sees_what_a_process_imports() -> None:
    assert {"fastapi", "reconciler.web", "reconciler.web.app"} <= imported_by("api", "--help")


def test_fleet_help_imports_no_command_and_no_store() -> None:
    imported = imported_by("--help")
    assert imported & (SERVERS_ONLY | STORE) == set()
    assert "reconciler.cli.tenants" not in imported


@pytest.mark.parametrize("verb", ["get", "apply"])
def test_store_commands_import_the_store_and_not_the_servers(fleet: Fleet, tmp_path: Path, verb: str) -> None:
    url = _store(tmp_path / "fleet.db")
    file = tmp_path / "tenant.yaml"
    file.write_text(TENANT)
    args = ["get", "tenants"] if verb == "get" else ["apply", "-f", str(file)]
    imported = imported_by(*args, "--db", url, env=fleet.env)
    assert {"state.store", "specs"} <= imported
    assert imported & SERVERS_ONLY == set()


# What a store command on an up-to-date SQLite store never needs: an ORM, the logger (nothing is logged),
# PostgreSQL's dialect and driver, and the rules only a migration uses.
NEVER_FOR_A_SQLITE_READ = {"sqlmodel", "sqlalchemy.orm", "loguru", "sqlalchemy.dialects.postgresql",
                           "state.dialects.postgresql", "psycopg"}


@pytest.mark.parametrize("verb", ["get", "apply"])
def test_store_commands_on_an_up_to_date_sqlite_store_load_no_orm_logger_or_postgresql(
    fleet: Fleet, tmp_path: Path, verb: str
) -> None:
    url = _store(tmp_path / "fleet.db")
    file = tmp_path / "tenant.yaml"
    file.write_text(TENANT)
    args = ["get", "tenants"] if verb == "get" else ["apply", "-f", str(file)]
    imported = imported_by(*args, "--db", url, env=fleet.env)
    assert imported & NEVER_FOR_A_SQLITE_READ == set()
    assert ("yaml" in imported) == (verb == "apply"), "YAML only to read a file"


def test_db_after_the_command_is_the_store_used(fleet: Fleet, tmp_path: Path) -> None:
    url = _store(tmp_path / "elsewhere.db")  # FLEET_DATA_DIR has no store: only --db finds this one
    applied = fleet.run("apply", "-f", "-", "--db", url, stdin=TENANT)
    assert applied.stdout.strip() == "tenant/acme created, generation 1"
    assert _names(fleet.run("get", "tenants", "--db", url).stdout) == ["acme"]
    assert _names(fleet.run("--db", url, "get", "tenants").stdout) == ["acme"], "before the command: the same"


def test_given_twice_the_later_db_wins(fleet: Fleet, tmp_path: Path) -> None:
    url, missing = _store(tmp_path / "real.db"), f"sqlite:///{tmp_path / 'missing.db'}"
    assert fleet.run("--db", missing, "get", "tenants", "--db", url).returncode == 0
    refused = fleet.run("--db", url, "get", "tenants", "--db", missing, check=False)
    assert refused.returncode == 1 and "missing.db" in refused.stderr


def test_data_dir_after_the_command_and_after_a_group(fleet: Fleet, tmp_path: Path) -> None:
    data_dir = tmp_path / "other-data"
    _store(data_dir / "fleet.db")
    assert "base" in fleet.run("template", "list", "--data-dir", str(data_dir)).stdout
    assert "base" in fleet.run("template", "--data-dir", str(data_dir), "list").stdout
    assert fleet.run("get", "tenants", "--data-dir", str(data_dir)).returncode == 0
    assert fleet.run("get", "tenants", check=False).returncode == 1, "without it: FLEET_DATA_DIR, which has none"


def test_the_options_have_the_same_help_after_the_command(fleet: Fleet) -> None:
    def option_help(*args: str) -> str:
        text = fleet.run(*args, "--help").stdout
        return " ".join(text[text.index("--db"):text.index("--help", text.index("--db"))].split())

    assert option_help() == option_help("get") == option_help("token", "create")
    assert "FLEET_DB" in option_help() and "FLEET_DATA_DIR" in option_help()


def _names(table: str) -> list[str]:
    return [line.split()[0] for line in table.splitlines()[1:]]


def _store(path: Path) -> str:
    """A store as `fleet up` leaves it."""
    from state import Store

    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path}"
    Store(url).close()
    return url
