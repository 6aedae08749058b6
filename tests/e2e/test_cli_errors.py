"""Bad input: one line naming the field and the rule, exit code 2, nothing written."""

import pytest

from tests.e2e.conftest import Fleet

GOOD = "kind: Tenant\nmetadata: {name: good}\nspec: {template: base}\n"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("kind: Tenant\nmetadata: {name: Acme}\nspec: {template: base}\n", "metadata.name: must be a DNS label"),
        ("kind: Tenant\nmetadata: {name: acme}\nspec: {template: base, memroy: 1Gi}\n", "spec.memroy: unknown field"),
        (
            "kind: Tenant\nmetadata: {name: acme}\nspec: {template: base, resources: {memory: 256MB}}\n",
            "spec.resources.memory: must be a size like 256Mi",
        ),
        (
            "kind: Tenant\nmetadata: {name: acme}\nspec: {template: base, resources: {io: 10Ki}}\n",
            "spec.resources.io: must be between 1Mi and 1Ti",
        ),
        ("kind: Tenant\nmetadata: {name: acme}\nspec: {template: nope}\n", "spec.template: unknown template 'nope'"),
        ("kind: Tenant\nmetadata: {name: acme}\n", "spec: is required"),
        ("kind: Widget\nmetadata: {name: acme}\nspec: {}\n", "kind: must be 'Tenant'"),
        ("{not yaml: [", "not valid YAML or JSON"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(initialised: Fleet, document: str, message: str) -> None:
    result = initialised.run("apply", "-f", "-", stdin=GOOD + "---\n" + document, check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert initialised.tenant("acme") is None
    assert initialised.tenant("good") is None, "a bad document in a batch writes nothing, not even the good one"


def test_dry_run_prints_the_plan_and_writes_nothing(initialised: Fleet) -> None:
    result = initialised.run("apply", "-f", "-", "--dry-run", stdin=GOOD)
    assert "tenant/good created (dry run)" in result.stdout
    assert "plan: clone from template base@1" in result.stdout
    assert "plan: start the container" in result.stdout
    assert initialised.tenant("good") is None


def test_commands_on_a_missing_tenant_say_so(initialised: Fleet) -> None:
    for args in (["describe", "tenant", "ghost"], ["delete", "tenant", "ghost"], ["pause", "ghost"]):
        result = initialised.run(*args, check=False)
        assert result.returncode == 1 and "ghost not found" in result.stderr, args


def test_without_a_store_the_cli_says_how_to_get_one(fleet: Fleet) -> None:
    result = fleet.run("get", "tenants", check=False)
    assert result.returncode == 1
    assert "fleet up" in result.stderr and "--db" in result.stderr
