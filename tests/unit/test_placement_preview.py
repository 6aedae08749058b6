"""The dry run's "would land on" is the scheduler's own choice, for the CLI and the API alike."""

import pytest

from reconciler.placement_preview import would_place
from state import Store
from state.nodes import NodeStore
from tests.helpers import tenant
from tests.unit.test_scheduler import register

pytestmark = pytest.mark.both_stores


def test_a_dry_run_names_the_node_the_scheduler_would_choose_or_says_why_none(store: Store) -> None:
    result = store.apply_tenants([tenant("acme")], dry_run=True)[0]
    assert result.desired is not None
    nobody = would_place(store, result.desired, {})
    assert nobody.node is None and nobody.unschedulable and "no node" in nobody.unschedulable
    assert would_place(store, result.desired, {}, local_node="solo").node == "solo"
    nodes = NodeStore(store)
    register(nodes, "full", slots=0)
    register(nodes, "roomy")
    assert would_place(store, result.desired, {}).node == "roomy"
    picky = would_place(store, result.desired, {"node.fleet/zone": "mars"})
    assert picky.node is None and picky.unschedulable and "node selector" in picky.unschedulable
