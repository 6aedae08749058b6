"""The billing signup on an LXD node, as on nspawn (tests/integration/test_signup_flow.py, the same flow
from tests/signup_flow.py): a signed webhook -> the tenant Running in an LXD container -> authorize -> the
customer's page through the gateway; the cancellation deletes the instance, its volume and ACL rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from drivers.lxd_api import LxdClient
from drivers.lxd_config import GENERATION, MARKER
from drivers.lxd_host import DEFAULT_NETWORK, DEFAULT_POOL
from tests.e2e.conftest import Fleet
from tests.signup_flow import TENANT, billing_site, cancel, sign_up

pytest_plugins = ["tests.lxd.runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]
ARGS = ("--driver", "lxd", "--pool-size", "2Gi", "--address-range", "10.219.3.0/24")


def test_signup_webhook_to_the_containers_page_through_the_gateway_on_lxd(
    fresh_lxd: LxdClient, tmp_path: Path
) -> None:
    try:
        with billing_site(Fleet(data_dir=tmp_path / "data"), *ARGS) as site:
            # The first signup on a fresh node also builds the base template (an image import): allow for it.
            signup = sign_up(site, running_within=90)
            instance = fresh_lxd.instance(TENANT)
            assert instance is not None and instance.running
            assert instance.config[MARKER] == "true" and instance.config[GENERATION] == "1"
            address = site.status().json()["status"]["address"]
            assert address in instance.addresses.get("eth0", ())  # the gateway reached the container itself
            deleted = cancel(site, signup, gone_within=60)
            removed = deleted["details"]["removed"]
            assert f"instance {TENANT}" in removed and f"root volume {DEFAULT_POOL}/container/{TENANT}" in removed
            assert fresh_lxd.instance(TENANT) is None
            assert not fresh_lxd.exists(f"/1.0/storage-pools/{DEFAULT_POOL}/volumes/container/{TENANT}")
            acl = fresh_lxd.get(f"/1.0/network-acls/{DEFAULT_NETWORK}-ingress").metadata
            assert not [rule for rule in acl["ingress"] if rule.get("description") == f"fleet:{TENANT}"], acl
    finally:
        shutil.rmtree(Path("/var/log/lxd") / TENANT, ignore_errors=True)  # LXD keeps a deleted instance's log
