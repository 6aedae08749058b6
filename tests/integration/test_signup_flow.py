"""The product's promise, on the real driver: a signed signup webhook -> a Running nspawn container ->
authorize -> the customer's first GET through the gateway returns their container's page; the
cancellation removes everything. `fleet up` as a user runs it (root only; skipped with the reason). The
flow itself is tests/signup_flow.py, shared with the LXD version (tests/lxd/test_lxd_signup.py)."""

import pytest

from tests.e2e.conftest import Fleet
from tests.integration.test_fleet_nspawn import ARGS, _unavailable
from tests.integration.test_fleet_nspawn import node as node  # the fixture: a swept data dir, swept again after
from tests.signup_flow import billing_site, cancel, sign_up

pytestmark = [pytest.mark.root, pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]


def test_signup_webhook_to_the_containers_page_through_the_gateway_then_cancel(node: Fleet) -> None:
    with billing_site(node, *ARGS) as site:
        signup = sign_up(site)
        assert signup.first_byte_seconds < 5
        deleted = cancel(site, signup)
        assert any("subvolume" in item for item in deleted["details"]["removed"]), deleted
