"""`fleet doctor` as a user runs it: on a host missing a tool it names the tool and the Debian package to
install, and exits 1; it says whether the store is reachable."""

import os
import shutil
import subprocess
from pathlib import Path

from drivers.nspawn_doctor import TOOLS
from tests.e2e.conftest import FLEET, Fleet


def path_without(tmp_path: Path, missing: str) -> str:
    """A PATH holding every tool doctor looks for that this host has, except `missing`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if tool != missing and found is not None:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def doctor(fleet: Fleet, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = fleet.env | ({"PATH": path} if path is not None else {})
    return subprocess.run([FLEET, "doctor", *args], capture_output=True, text=True, env=env, timeout=120)


def test_a_missing_tool_is_named_with_its_debian_package(initialised: Fleet, tmp_path: Path) -> None:
    result = doctor(initialised, path=path_without(tmp_path, "nft"))
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["FAILED", "tool", "nft"] for line in lines), result.stdout
    assert "  tool nft: apt-get install -y nftables  (Debian package nftables)" in lines
    assert "problem(s) keep the nspawn driver or the store from working" in result.stderr


def test_a_missing_optional_tool_is_a_warning_not_a_failure(initialised: Fleet, tmp_path: Path) -> None:
    result = doctor(initialised, path=path_without(tmp_path, "debootstrap"))
    line = next(line for line in result.stdout.splitlines() if line.split()[1:3] == ["tool", "debootstrap"])
    assert line.split()[0] == "WARNING"
    assert "  tool debootstrap: apt-get install -y debootstrap  (Debian package debootstrap)" in result.stdout


def test_the_store_is_checked_and_its_revision_shown(initialised: Fleet) -> None:
    result = doctor(initialised)
    store = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["store"])
    assert store.split()[0] == "OK" and "reachable, revision" in store, result.stdout


def test_an_unreachable_store_fails_and_says_what_to_check(fleet: Fleet) -> None:
    result = doctor(fleet, "--db", "postgresql://nobody@127.0.0.1:1/fleet")
    store = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["store"])
    assert store.split()[0] == "FAILED", result.stdout
    assert "store: check that the database server runs" in result.stdout or "store: check the URL" in result.stdout
    assert result.returncode == 1


def test_on_a_host_with_every_tool_only_warnings_remain(initialised: Fleet) -> None:
    result = doctor(initialised)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    if os.geteuid() != 0 or any(shutil.which(tool) is None for tool, (_, needed) in TOOLS.items() if needed):
        assert result.returncode == 1 and failed
    else:
        assert failed == [] and result.returncode == 0, result.stdout
        assert "This host can run the nspawn driver" in result.stdout
