"""Imports point one way: reconciler -> state, drivers -> specs. This test fails on any import against it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"specs", "state", "drivers", "reconciler"}
FORBIDDEN = {
    "specs": {"state", "drivers", "reconciler"},
    "drivers": {"state", "reconciler"},
    "state": {"drivers", "reconciler"},
    "reconciler": set(),
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PROJECT


def violations(package: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {sorted(imports_of(path) & FORBIDDEN[package])}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if imports_of(path) & FORBIDDEN[package]
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package: str) -> None:
    assert violations(package) == []


def test_the_check_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from state import Store\nimport reconciler.plan\n")
    assert imports_of(bad) == {"state", "reconciler"}


def test_only_state_speaks_sql() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("specs", "drivers", "reconciler")
        for path in (ROOT / package).rglob("*.py")
        if "sqlalchemy" in imports_of_any(path) or "sqlite3" in imports_of_any(path)
    ]
    assert offenders == []


def imports_of_any(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found
