"""Egress by policy without a host: the spec's canonical form and its errors, the store (columns, template
default, raw SQL checks, generation), the plan, the nftables elements the nspawn driver derives, and what
the drivers refuse (the LXD driver's ACL rules: tests/unit/test_lxd_egress.py)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers import nspawn_egress
from drivers.lxd import LxdDriver
from drivers.nspawn_network import Networks
from reconciler.actions import ApplyNetwork
from reconciler.documents import describe_validation
from reconciler.plan import plan
from specs import Network, Observed, PermanentError, ResolvedSpec, Resources, Template, Tenant
from specs.tenant import INTERNET, EgressRule, egress_display
from state import InvalidRecord, Store
from tests.helpers import tenant
from tests.unit.test_store_sql import _row, _sqlite3_shell, needs_shell

pytestmark = pytest.mark.both_stores  # the store tests on SQLite and PostgreSQL


def rules(value: object) -> tuple[EgressRule, ...] | None:
    return Network(egress=value).egress


def test_none_and_internet_are_shorthands_and_rules_come_out_canonical() -> None:
    assert rules("none") == () and rules(None) is None
    assert rules("internet") == (EgressRule(to=INTERNET),)
    listed = rules(
        [
            {"to": "10.1.0.0/16", "ports": [443]},
            {"to": "198.51.100.7"},
            {"to": "internet", "ports": [53]},
            {"to": "10.1.0.0/16", "ports": [80, 443]},
            {"to": "internet", "ports": [443.0]},
        ]
    )
    assert listed == (
        EgressRule(to="internet", ports=(53, 443)),
        EgressRule(to="10.1.0.0/16", ports=(80, 443)),
        EgressRule(to="198.51.100.7/32"),
    )
    # a rule to every port of a destination absorbs a list of ports to it
    assert rules([{"to": "internet", "ports": [80]}, {"to": "internet"}]) == (EgressRule(to=INTERNET),)
    assert egress_display(rules("none")) == "none" and egress_display(rules("internet")) == "internet"
    assert egress_display(listed) == [
        {"to": "internet", "ports": [53, 443]},
        {"to": "10.1.0.0/16", "ports": [80, 443]},
        {"to": "198.51.100.7/32"},
    ]
    assert rules(egress_display(listed)) == listed  # what `fleet get -o yaml` shows applies back unchanged


@pytest.mark.parametrize(
    ("egress", "message"),
    [
        ("everything", 'must be "none", "internet" or a list of rules'),
        ([{"to": "10.0.0.1/8"}], "rule 1: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
        ([{"to": "internet"}, {"to": "300.1.1.1"}], 'rule 2: "to" must be an IPv4 CIDR'),
        ([{"to": "2001:db8::/32"}], "rule 1: 2001:db8::/32 is IPv6; tenants have IPv4 only"),
        ([{"to": "internet", "ports": [0]}], "rule 1: ports must be whole numbers from 1 to 65535"),
        ([{"to": "internet", "ports": []}], "rule 1: ports must list at least one port"),
        ([{"to": "internet", "port": [80]}], "rule 1: unknown key 'port'"),
        ([{"ports": [80]}], 'rule 1: "to" must be an IPv4 CIDR'),
        (["internet"], "rule 1: must be a mapping"),
        (
            [{"to": "10.0.0.0/8"}, {"to": "10.2.0.0/16", "ports": [80]}],
            "rules 1 and 2 overlap (10.0.0.0/8 and 10.2.0.0/16)",
        ),
        ([{"to": f"198.51.100.{n}"} for n in range(33)], "must list at most 32 rules"),
        ([{"to": "internet", "ports": list(range(1, 34))}], "rule 1: must list at most 32 ports"),
    ],
)
def test_a_bad_egress_is_refused_naming_the_field_and_the_rule(egress: object, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Tenant.model_validate(
            {"metadata": {"name": "acme"}, "spec": {"template": "base", "network": {"egress": egress}}}
        )
    described = describe_validation(raised.value)
    assert described.startswith("spec.network.egress: ") and message in described, described


def test_egress_is_stored_canonical_defaults_from_the_template_and_a_change_is_a_new_generation(store: Store) -> None:
    store.upsert_template(
        Template(
            name="open",
            version="1",
            resources=Resources(cpu="1", memory="64Mi", disk="1Gi", pids=64),
            network=Network(egress="internet"),
        )
    )
    store.apply_tenants(
        [
            tenant("acme"),
            tenant("globex", "open"),
            tenant("initech", "open", network={"egress": "none"}),
            tenant("hooli", network={"ingress": [8080], "egress": [{"to": "198.51.100.0/24", "ports": [443]}]}),
        ]
    )
    resolved = {name: store.desired(name).spec.network for name in ("acme", "globex", "initech", "hooli")}  # type: ignore[union-attr]
    assert resolved["acme"] == Network(ingress=(80,), egress="none"), "the built-in template: none, as before"
    assert resolved["globex"] == Network(ingress=(), egress="internet"), "the template's default"
    assert resolved["initech"].egress == () and resolved["hooli"].ingress == (8080,)
    assert resolved["hooli"].egress == (EgressRule(to="198.51.100.0/24", ports=(443,)),)
    assert _row(store, "hooli")["egress"] == '[{"to": "198.51.100.0/24", "ports": [443]}]'
    assert _row(store, "acme")["egress"] is None  # unset: the template's, whatever it becomes
    got = store.get_tenant("hooli")
    assert got is not None and got.spec.network.egress == resolved["hooli"].egress
    store.apply_tenant(tenant("hooli", network={"ingress": [8080], "egress": "internet"}))
    assert _row(store, "hooli")["generation"] == 2
    assert store.get_template("open").network.egress == rules("internet")  # type: ignore[union-attr]


@needs_shell
def test_a_raw_write_of_egress_is_checked_and_resolved(store: Store) -> None:
    done = _sqlite3_shell(
        store,
        "INSERT INTO tenants (name, template, egress)"
        """ VALUES ('acme', 'base', '[{"to": "10.1.2.3"}, {"to": "internet", "ports": [443]}]');""",
    )
    assert done.returncode == 0, done.stderr
    desired = store.desired("acme")
    assert desired is not None and desired.spec is not None
    assert desired.spec.network.egress == (EgressRule(to="internet", ports=(443,)), EgressRule(to="10.1.2.3/32"))
    for bad, rule in [
        ('\'{"to": "internet"}\'', "egress_must_be_a_json_array_of_rules"),
        ('\'[{"to": "everywhere"}]\'', "egress: each rule must be"),
        ('\'[{"to": "internet", "ports": [0]}]\'', "egress: each rule must be"),
        ('\'[{"to": "internet", "port": [80]}]\'', "egress: each rule must be"),
        ("'[\"internet\"]'", "egress: each rule must be"),
    ]:
        refused = _sqlite3_shell(store, f"UPDATE tenants SET egress = {bad} WHERE name = 'acme';")
        assert refused.returncode != 0 and rule in refused.stderr, (bad, refused.stderr)
    changed = _sqlite3_shell(store, "UPDATE tenants SET egress = '[]' WHERE name = 'acme';")
    assert changed.returncode == 0 and _row(store, "acme")["generation"] == 2
    for sql in (
        "UPDATE templates SET egress = 'x';",
        "INSERT INTO plans (id, template, egress) VALUES ('p', 'base', 'x');",
    ):
        refused = _sqlite3_shell(store, sql)
        assert refused.returncode != 0 and "egress_must_be_a_json_array_of_rules" in refused.stderr, sql


def test_the_store_names_the_field_of_a_refused_egress(store: Store) -> None:
    with pytest.raises(InvalidRecord) as raised, store.session.write() as conn:
        conn.exec_driver_sql("INSERT INTO tenants (name, template, egress) VALUES ('acme', 'base', '[{\"to\": 1}]')")
    assert raised.value.field == "spec.network.egress"


def _spec(network: Network) -> ResolvedSpec:
    return ResolvedSpec(
        name="acme",
        generation=1,
        template=Template(name="base"),
        resources=Resources(cpu="1", memory="64Mi", disk="1Gi", pids=64),
        network=network,
    )


def _observed(network: Network) -> Observed:
    return Observed(
        name="acme",
        template="base@1",
        resources=Resources(cpu="1", memory="64Mi", disk="1Gi", pids=64),
        network=network,
        running=True,
        address="10.213.0.2",
        pid=1,
    )


def test_an_egress_change_is_applied_in_place_and_unset_egress_is_none() -> None:
    internet = Network(ingress=(80,), egress="internet")
    assert plan(_spec(internet), _observed(Network(ingress=(80,), egress="none"))) == [ApplyNetwork(internet)]
    assert plan(_spec(internet), _observed(internet)) == []
    assert plan(_spec(Network(ingress=(80,))), _observed(Network(ingress=(80,), egress="none"))) == []
    assert ApplyNetwork(internet).describe() == "apply network (ingress ports 80; egress internet)"


def test_the_nspawn_elements_of_rules_read_back_as_the_same_rules() -> None:
    veth = "fl0123456789ab"
    wanted = rules(
        [{"to": "internet", "ports": [443, 53]}, {"to": "10.0.0.0/8"}, {"to": "198.51.100.7", "ports": [22]}]
    )
    assert wanted is not None
    found = nspawn_egress.elements(veth, wanted)
    assert found == {
        ("egress_internet_ports", veth, None, 53),
        ("egress_internet_ports", veth, None, 443),
        ("egress_any", veth, "10.0.0.0/8", None),
        ("egress_ports", veth, "198.51.100.7/32", 22),
    }
    assert nspawn_egress.rules_from(veth, found | {("egress_internet", "fl999999999999", None, None)}) == wanted
    assert (
        nspawn_egress.element_text(("egress_ports", veth, "198.51.100.7/32", 22)) == f'"{veth}" . 198.51.100.7/32 . 22'
    )
    # nft's JSON: a /32 shows as a bare address, a network as a prefix
    assert nspawn_egress.element_from_json("egress_any", {"concat": [veth, "198.51.100.7"]}) == (
        "egress_any",
        veth,
        "198.51.100.7/32",
        None,
    )
    assert nspawn_egress.element_from_json(
        "egress_ports", {"concat": [veth, {"prefix": {"addr": "10.0.0.0", "len": 8}}, 80]}
    ) == ("egress_ports", veth, "10.0.0.0/8", 80)


def test_a_stored_rule_no_spec_makes_is_refused_by_the_driver_naming_the_field() -> None:
    with pytest.raises(PermanentError, match=r"spec.network.egress: rule 1: .* has host bits set") as raised:
        nspawn_egress.checked_rules((EgressRule.model_construct(to="10.0.0.1/8", ports=None),))
    assert raised.value.reason == "BadEgress"
    with pytest.raises(PermanentError):
        nspawn_egress.check_interface("../../etc")


def test_internet_egress_without_a_default_route_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    networks = Networks(tmp_path / "state")
    monkeypatch.setattr(nspawn_egress, "default_interface", lambda: None)
    with pytest.raises(PermanentError, match="--egress-interface") as raised:
        networks.outbound_interface()
    assert raised.value.reason == "EgressUnavailable"


def test_the_lxd_driver_refuses_stored_egress_no_spec_makes_before_changing_anything() -> None:
    driver = object.__new__(LxdDriver)  # no daemon: the refusal comes before any request
    driver.node = "lxd-node"
    bad = (EgressRule.model_construct(to="10.0.0.0/8", ports=None), EgressRule.model_construct(to="10.1.0.0/16"))
    with pytest.raises(PermanentError, match=r"spec\.network\.egress: rules 1 and 2 overlap") as raised:
        driver.apply_network("acme", Network.model_construct(ingress=(80,), egress=bad))
    assert raised.value.reason == "BadEgress"


def test_template_egress_on_the_command_line() -> None:
    from reconciler.cli.templates import _template
    from reconciler.documents import BadInput

    def made(*egress: str) -> tuple[EgressRule, ...] | None:
        return _template("web@1", "500m", "256Mi", "1Gi", 256, None, [80], "", "never", list(egress)).network.egress

    assert made() == () and made("none") == () and made("internet") == rules("internet")
    assert made("internet:443,80", "10.20.0.0/16:5432", "198.51.100.7") == rules(
        [{"to": "internet", "ports": [80, 443]}, {"to": "10.20.0.0/16", "ports": [5432]}, {"to": "198.51.100.7"}]
    )
    with pytest.raises(BadInput, match="--egress: 'internet:https'"):
        made("internet:https")
    with pytest.raises(BadInput, match=r"^network\.egress: rule 1: 10\.0\.0\.1/8 has host bits set"):
        made("10.0.0.1/8")
