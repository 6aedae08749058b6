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


# -- doors inside the contracts ---------------------------------------------------------------------------
# Modules that touch the host (processes, devices, netlink, raw syscalls). Only drivers/ may import them;
# each exception says why.
HOST_MODULES = {"subprocess", "ctypes", "fcntl", "pyroute2", "psutil", "resource"}
HOST_ACCESS_ALLOWED = {
    # the SQLite store wakes its waiters by inotify on its own database file (no other host access)
    "state/dialects/sqlite_listener.py": {"ctypes"},
}
# What outside drivers/ may import of it: the package, its protocol and its registry; never a backend.
DRIVER_SEAM = {"drivers", "drivers.base", "drivers.registry"}
DYNAMIC_IMPORTS_ALLOWED = {"drivers/registry.py"}  # loads backends lazily by name


def module_imports(path: Path) -> set[str]:
    """Full dotted names of every absolute import, at any depth in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "drivers":  # `from drivers import nspawn` names a backend module
                found.update(f"drivers.{alias.name}" for alias in node.names if alias.name.islower())
    return found


def host_access(path: Path, relative: str) -> set[str]:
    roots = {name.split(".")[0] for name in module_imports(path)}
    return (roots & HOST_MODULES) - HOST_ACCESS_ALLOWED.get(relative, set())


def backend_imports(path: Path) -> set[str]:
    return {
        name
        for name in module_imports(path)
        if name.startswith("drivers.") and name not in DRIVER_SEAM and name.split(".")[1] not in {"base", "registry"}
    } - {"drivers.available_drivers", "drivers.create_driver", "drivers.host_checks", "drivers.host_problems",
         "drivers.limit_heap_arenas", "drivers.trim_heap"}


def dynamic_imports(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Name) and node.id == "__import__":
            return True
        if isinstance(node, ast.Attribute) and node.attr in {"import_module", "__import__"}:
            return True
    return "importlib" in {name.split(".")[0] for name in module_imports(path)}


def door_violations(root: Path) -> list[str]:
    found = []
    for package in ("specs", "state", "reconciler"):
        for path in sorted((root / package).rglob("*.py")):
            relative = str(path.relative_to(root))
            if host_access(path, relative):
                found.append(f"{relative} touches the host through {sorted(host_access(path, relative))}")
            if backend_imports(path):
                found.append(f"{relative} imports a backend's own modules {sorted(backend_imports(path))}")
    for path in sorted(root.rglob("*.py")):
        relative = str(path.relative_to(root))
        if relative.split("/")[0] in PROJECT and relative not in DYNAMIC_IMPORTS_ALLOWED and dynamic_imports(path):
            found.append(f"{relative} imports dynamically")
    return found


def test_no_door_around_the_contracts() -> None:
    assert door_violations(ROOT) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import subprocess\n", "touches the host through ['subprocess']"),
        ("def f():\n    from pyroute2 import IPRoute\n", "touches the host through ['pyroute2']"),
        ("from drivers import nspawn_templates\n", "imports a backend's own modules ['drivers.nspawn_templates']"),
        ("import drivers.nspawn\n", "imports a backend's own modules ['drivers.nspawn']"),
        ("import importlib\nimportlib.import_module('drivers.nspawn')\n", "imports dynamically"),
        ("x = __import__('os')\n", "imports dynamically"),
    ],
)
def test_the_door_check_catches_each_kind(tmp_path: Path, source: str, expected: str) -> None:
    (tmp_path / "reconciler").mkdir()
    (tmp_path / "reconciler" / "bad.py").write_text(source)
    assert any(expected in line for line in door_violations(tmp_path)), door_violations(tmp_path)


def test_the_door_check_lets_the_seam_through(tmp_path: Path) -> None:
    (tmp_path / "reconciler").mkdir()
    (tmp_path / "reconciler" / "good.py").write_text(
        "from drivers import Driver, create_driver, host_problems\nfrom drivers.base import Driver as D\n"
    )
    assert door_violations(tmp_path) == []
