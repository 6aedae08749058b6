"""`fleet node init|status` and `fleet template build|import|list` as an operator runs them, on a real
loop-backed pool. Root only; skipped with the reason elsewhere."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet
from tests.integration.sweep import sweep_node

DATA_DIR = Path("/var/tmp/fleet-test-node-cli")  # fixed, so a killed run's leftovers are found and removed
RANGE = "10.218.0.0/16"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the nspawn driver makes loop devices and mounts"
    from drivers.nspawn import host_problems

    problems = host_problems()
    return "; ".join(problems) if problems else None


pytestmark = [pytest.mark.root, pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]


@pytest.fixture
def node() -> Iterator[Fleet]:
    sweep_node(DATA_DIR, prefix="fc-", address_range=RANGE)
    try:
        yield Fleet(data_dir=DATA_DIR)
    finally:
        sweep_node(DATA_DIR, prefix="fc-", address_range=RANGE)


def test_node_init_then_templates_built_and_imported_are_listed(node: Fleet, tmp_path: Path) -> None:
    init = node.run("node", "init", "--pool-size", "1Gi")
    assert "template base@1" in init.stdout and str(DATA_DIR / "fleet.db") in init.stdout
    assert (DATA_DIR / "pool" / "templates" / "base@1" / "fleet" / "init").exists()

    built = node.run("template", "build", "tiny@1", "--busybox", "--memory", "64Mi", "--port", "8080")
    assert built.stdout.strip() == "template/tiny@1 built"

    rootfs = tmp_path / "rootfs"
    shutil.copytree(DATA_DIR / "pool" / "templates" / "tiny@1", rootfs, symlinks=True)
    imported = node.run("template", "import", "web@2", "--rootfs", str(rootfs), "--cpu", "250m")
    assert imported.stdout.strip() == "template/web@2 imported"

    listing = node.run("template", "list").stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert rows["tiny"][:3] == ["tiny", "1", "500m"] and "64Mi" in rows["tiny"] and "8080" in rows["tiny"]
    assert rows["web"][:3] == ["web", "2", "250m"]
    assert "base" in rows

    status = node.run("node", "status").stdout
    assert "nspawn" in status and "tenants running" in status and "KSM pages sharing" in status


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["template", "build", "tiny", "--busybox"], "NAME@VERSION: 'tiny' has no version"),
        (["template", "build", "tiny@1"], "--busybox or --debootstrap SUITE: give exactly one"),
        (["template", "build", "Tiny@1", "--busybox"], "name: must be a DNS label"),
        (["template", "build", "tiny@1", "--busybox", "--memory", "1Mi"], "resources.memory: must be between"),
    ],
)
def test_bad_template_input_is_one_line_exit_2_and_nothing_written(
    node: Fleet, args: list[str], message: str
) -> None:
    node.run("node", "init", "--pool-size", "1Gi")
    result = node.run(*args, check=False)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (DATA_DIR / "pool" / "templates" / "tiny@1").exists()
    assert "tiny" not in node.run("template", "list").stdout
