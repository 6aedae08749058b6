"""A fleet on real PostgreSQL: agents and schedulers as separate processes, tenants inserted with psql."""

from collections import Counter

import pytest

from tests.fleet.conftest import Cluster
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

INSERT = "INSERT INTO tenants (name, template) SELECT 't' || g, 'base' FROM generate_series({start}, {end}) g"


def _start_agents(cluster: Cluster, *args: str) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.agent(node, *args)
    wait_for(lambda: len(cluster.nodes()) == 3, timeout=30, what="three nodes registered")


@pytest.mark.parametrize("strategy", ["binpack", "spread"])
def test_900_tenants_inserted_with_psql_all_run_placed_by_strategy_within_capacity(
    cluster: Cluster, strategy: str
) -> None:
    cluster.scheduler("scheduler", "--strategy", strategy)
    _start_agents(cluster, "--max-tenants", "350")
    cluster.psql(INSERT.format(start=1, end=900))
    wait_for(lambda: cluster.running() == 900, timeout=120, interval=0.5, what="900 tenants Running")
    per_node = cluster.per_node()
    assert sum(per_node.values()) == 900
    assert max(per_node.values()) <= 350, per_node
    if strategy == "binpack":
        assert sorted(per_node.values()) == [200, 350, 350]
    else:
        assert sorted(per_node.values()) == [300, 300, 300]
    nodes = cluster.nodes()
    assert {n: (v["ready"], v["tenants"]) for n, v in nodes.items()} == {n: (True, c) for n, c in per_node.items()}


def test_a_killed_agent_goes_not_ready_then_comes_back_without_rescheduling(cluster: Cluster) -> None:
    cluster.scheduler("scheduler", "--strategy", "spread")
    _start_agents(cluster)
    cluster.psql(INSERT.format(start=1, end=90))
    wait_for(lambda: cluster.running() == 90, timeout=60, interval=0.3, what="90 tenants Running")
    before = dict(cluster.rows("SELECT name, node FROM tenants"))
    on_n1 = sorted(name for name, node in before.items() if node == "n1")
    assert len(on_n1) == 30

    cluster.kill("agent-n1")  # kill -9
    wait_for(lambda: not cluster.nodes()["n1"]["ready"], timeout=3 + 3, interval=0.2,
             what="n1 NotReady within the lease time (3s) plus one scheduler pass")
    wait_for(lambda: set(cluster.ready_conditions("n1").values()) == {"Unknown"}, timeout=5,
             what="n1's tenants Ready=Unknown")
    assert set(cluster.ready_conditions("n2").values()) == {"True"}
    assert dict(cluster.rows("SELECT name, node FROM tenants")) == before, "nothing was rescheduled"

    cluster.agent("n1")
    wait_for(lambda: cluster.nodes()["n1"]["ready"], timeout=10, what="n1 Ready again")
    wait_for(lambda: set(cluster.ready_conditions("n1").values()) == {"True"}, timeout=30,
             what="n1's tenants Ready=True again")
    assert dict(cluster.rows("SELECT name, node FROM tenants")) == before


def test_two_schedulers_race_one_leads_no_double_binding_and_the_other_takes_over(cluster: Cluster) -> None:
    _start_agents(cluster)
    cluster.scheduler("s1")
    cluster.scheduler("s2")
    cluster.psql(INSERT.format(start=1, end=1000))
    wait_for(lambda: cluster.rows("SELECT count(*) FROM tenants WHERE node IS NULL") == [(0,)], timeout=60,
             interval=0.3, what="1,000 tenants bound")
    scheduled = Counter(name for (name,) in cluster.rows("SELECT tenant FROM events WHERE reason = 'Scheduled'"))
    assert len(scheduled) == 1000 and set(scheduled.values()) == {1}, "each tenant bound exactly once"
    leaders = {line.split("scheduler=")[-1].strip() for key in ("s1", "s2") for line in cluster.logs[key]
               if "Became the active scheduler" in line}
    assert len(leaders) == 1, f"exactly one active scheduler, saw {leaders}"

    (holder,) = cluster.rows("SELECT holder FROM leases WHERE name = 'scheduler'")[0]
    leader_key = next(k for k in ("s1", "s2") if any("Became the active" in line for line in cluster.logs[k]))
    cluster.kill(leader_key)
    cluster.psql(INSERT.format(start=1001, end=1010))
    wait_for(lambda: cluster.rows("SELECT count(*) FROM tenants WHERE node IS NULL") == [(0,)], timeout=3 + 3,
             interval=0.2, what="the standby to take over within the lease time and bind new tenants")
    (new_holder,) = cluster.rows("SELECT holder FROM leases WHERE name = 'scheduler'")[0]
    assert new_holder != holder


def test_restarting_postgresql_under_load_loses_no_write_and_everything_converges(cluster: Cluster) -> None:
    cluster.scheduler("scheduler")
    _start_agents(cluster)
    cluster.psql(INSERT.format(start=1, end=300))
    wait_for(lambda: cluster.running() >= 50, timeout=60, interval=0.1, what="work under way")
    cluster.server.restart()
    cluster.psql(INSERT.format(start=301, end=600))
    wait_for(lambda: cluster.running() == 600, timeout=120, interval=0.5, what="600 tenants Running after restart")
    assert cluster.rows("SELECT count(*) FROM tenants") == [(600,)]
    assert all(process.poll() is None for process in cluster.processes.values()), "no process died"
    scheduled = Counter(name for (name,) in cluster.rows("SELECT tenant FROM events WHERE reason = 'Scheduled'"))
    assert len(scheduled) == 600 and max(scheduled.values()) == 1


def test_tenants_deleted_before_they_were_bound_are_finalized_and_their_names_come_back(cluster: Cluster) -> None:
    cluster.scheduler("scheduler")
    cluster.agent("n1", "--max-tenants", "5")
    wait_for(lambda: len(cluster.nodes()) == 1, timeout=30, what="n1 registered")
    cluster.psql(INSERT.format(start=1, end=20))
    wait_for(lambda: cluster.running() == 5, timeout=60, interval=0.3, what="the 5 that fit Running")
    never_bound = sorted(name for (name,) in cluster.rows("SELECT name FROM tenants WHERE node IS NULL"))
    assert len(never_bound) == 15

    cluster.kill("scheduler")  # kill -9: the deletes land while no scheduler runs
    cluster.psql("DELETE FROM tenants")
    cluster.scheduler("scheduler")
    wait_for(lambda: cluster.rows("SELECT count(*) FROM tenants") == [(0,)], timeout=60, interval=0.3,
             what="every delete finished, bound or not")

    assert cluster.rows("SELECT count(*) FROM tenant_tombstones") == [(20,)], "watchers are told of each"
    receipts = dict(cluster.rows("SELECT tenant, details FROM events WHERE reason = 'Deleted'"))
    assert all(receipts[name] == '{"removed": [], "already_absent": []}' for name in never_bound)
    assert cluster.rows("SELECT count(*) FROM events WHERE reason = 'Finalized'") == [(20,)]
    cluster.psql("INSERT INTO tenants (name, template) SELECT name, 'base' FROM unnest(ARRAY['"
                 + "','".join(never_bound[:5]) + "']) AS name")
    wait_for(lambda: cluster.running() == 5, timeout=60, interval=0.3, what="the names used again, Running")
