"""Fleet as a user runs it on LXD: on a daemon that runs but was never initialised, `fleet template import
--driver lxd` and `fleet up --driver lxd` need nothing else (they make Fleet's storage pool and bridge); a
tenant reaches Running, its page answers at its address, and a delete leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from drivers.lxd_api import LxdClient
from drivers.lxd_host import DEFAULT_NETWORK, DEFAULT_POOL
from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for

pytest_plugins = ["tests.lxd.runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]
RANGE = "10.219.1.0/24"
ARGS = ("--driver", "lxd", "--pool-size", "2Gi", "--address-range", RANGE)
TENANT = "kind: Tenant\nmetadata: {name: NAME}\nspec: {template: TEMPLATE, resources: {memory: 64Mi, cpu: 250m}}\n"


def _rootfs(directory: Path) -> Path:
    for sub in ("usr/bin", "fleet", "srv/www", "tmp", "proc", "sys", "dev"):
        (directory / sub).mkdir(parents=True)
    shutil.copy2("/bin/busybox", directory / "usr/bin/busybox")
    for applet in ("sh", "hostname"):
        (directory / "usr/bin" / applet).symlink_to("busybox")
    (directory / "bin").symlink_to("usr/bin")
    (directory / "srv/www/index.html").write_text("tiny template page\n")
    init = directory / "fleet/init"
    init.write_text("#!/bin/sh\nexec busybox httpd -f -p 80 -h /srv/www\n")
    init.chmod(0o755)
    return directory


def _page(address: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_fleet_initialises_a_fresh_lxd_and_runs_a_tenant_from_an_imported_template(
    fresh_lxd: LxdClient, tmp_path: Path
) -> None:
    fleet = Fleet(data_dir=tmp_path / "data")
    imported = fleet.run("template", "import", "tiny@1", "--rootfs", str(_rootfs(tmp_path / "rootfs")),
                         "--driver", "lxd", "--memory", "64Mi")
    assert "template/tiny@1 imported" in imported.stdout
    assert fresh_lxd.exists(f"/1.0/storage-pools/{DEFAULT_POOL}")  # made by Fleet, on a loop image
    assert not fresh_lxd.exists(f"/1.0/networks/{DEFAULT_NETWORK}")  # not yet: no tenant, no address range
    again = fleet.run("template", "import", "tiny@1", "--rootfs", str(tmp_path / "rootfs"), "--driver", "lxd")
    assert "already on this node" in again.stdout
    process = start_operator(fleet, *ARGS)
    try:
        assert any("Driver: lxd (LXD 5" in line for line in fleet.logs), "".join(fleet.logs)
        for name, template in (("fl-acme", "base"), ("fl-tiny", "tiny")):
            fleet.run("apply", "-f", "-", stdin=TENANT.replace("NAME", name).replace("TEMPLATE", template))
        for name, expected in (("fl-acme", "fl-acme"), ("fl-tiny", "tiny template page")):
            document = fleet.wait_phase(name, "Running", timeout=60)
            address = document["status"]["address"]
            instance = fresh_lxd.instance(name)
            assert instance is not None and address in instance.addresses.get("eth0", ())
            page = wait_for(lambda address=address: _page(address), timeout=10, what=f"{name}'s page")
            assert expected in page, page
        for name in ("fl-acme", "fl-tiny"):
            fleet.run("delete", "tenant", name, "--wait", "--timeout", "60")
            shutil.rmtree(Path("/var/log/lxd") / name, ignore_errors=True)  # LXD keeps an instance's log
            assert fresh_lxd.instance(name) is None
            assert not fresh_lxd.exists(f"/1.0/storage-pools/{DEFAULT_POOL}/volumes/container/{name}")
        acl = fresh_lxd.get(f"/1.0/network-acls/{DEFAULT_NETWORK}-ingress").metadata
        assert not [rule for rule in acl["ingress"] if "fl-" in json.dumps(rule)], acl
        network = fresh_lxd.get(f"/1.0/networks/{DEFAULT_NETWORK}").metadata
        assert network["config"]["user.fleet.managed"] == "true"
        assert network["config"]["ipv4.address"] == "10.219.1.1/24"
    finally:
        stop_operator(fleet, process)
