"""`fleet up` serving the API and the gateway, and the token/plan/key verbs, as a user runs them."""

import re

import httpx

from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for


def test_fleet_up_serves_the_api_where_it_says_and_tokens_and_plans_work_from_the_cli(fleet: Fleet) -> None:
    fleet.data_dir.mkdir(parents=True)
    token = fleet.run("token", "create", "--name", "ops", "--role", "operator").stdout.strip()
    assert token.startswith("fleet_")
    assert "ops" in fleet.run("token", "list").stdout and token not in fleet.run("token", "list").stdout
    fleet.run("plan", "apply", "-f", "-", stdin="kind: Plan\nid: price_basic\ntemplate: base\n")
    assert "price_basic" in fleet.run("plan", "list").stdout
    process = start_operator(fleet, "--driver", "fake", "--api-listen", "127.0.0.1:0", "--gateway-listen",
                             "127.0.0.1:0")
    try:
        line = next(line for line in fleet.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        assert "gateway: http://127.0.0.1:" in line
        plans = httpx.get(f"{api}/api/v1/plans", headers={"authorization": f"Bearer {token}"}).json()
        assert [p["id"] for p in plans] == ["price_basic"]
        fleet.run("token", "revoke", "ops")
        # The API remembers a checked token for a second: a revocation from another process lands within it.
        wait_for(lambda: httpx.get(f"{api}/api/v1/plans", headers={"authorization": f"Bearer {token}"}).status_code
                 == 401, timeout=2.0, what="the revoked token to be refused")
    finally:
        stop_operator(fleet, process)


def test_bad_input_to_the_new_verbs_is_one_line_and_exit_2(fleet: Fleet) -> None:
    fleet.data_dir.mkdir(parents=True)
    cases = [
        (("token", "create", "--name", "x", "--role", "root"), "--role"),
        (("token", "create", "--name", "Bad_Name", "--role", "viewer"), "--name"),
        (("plan", "apply", "-f", "-"), "resources.memory"),
    ]
    stdins = [None, None, "kind: Plan\nid: price_x\ntemplate: base\nresources: {memory: 9Ti}\n"]
    for (args, _), stdin in zip(cases, stdins, strict=True):
        result = fleet.run(*args, stdin=stdin, check=False)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    unknown = fleet.run("plan", "apply", "-f", "-", stdin="kind: Plan\nid: price_y\ntemplate: nope\n", check=False)
    assert unknown.returncode == 2 and "template" in unknown.stderr
    assert fleet.run("key", "rotate").stdout.startswith("key/")
