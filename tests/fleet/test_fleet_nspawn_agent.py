"""A fleet with a real node: one agent runs the nspawn driver (its own loop-backed pool), one the fake
driver. Kill -9 the real agent: its tenants keep running, go Ready=Unknown, nothing moves; restart it:
they are Ready again without a single re-clone and with the same container processes."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.conftest import Cluster
from tests.helpers import wait_for

PREFIX = "fn-"
DATA_DIR = Path("/var/tmp/fleet-test-fleet-n1")
RANGE = "10.217.0.0/16"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the nspawn driver makes loop devices, cgroups, namespaces and nft rules"
    from drivers.nspawn import host_problems

    problems = host_problems()
    return "; ".join(problems) if problems else None


pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.skipif(_unavailable() is not None,
                                                                     reason=str(_unavailable()))]


@pytest.fixture
def real_node(cluster: Cluster) -> Iterator[Path]:
    from tests.integration.sweep import sweep_node

    sweep_node(DATA_DIR, prefix=PREFIX, address_range=RANGE)
    try:
        yield DATA_DIR
    finally:
        cluster.stop_all()  # first: a live agent would re-create what the sweep removes
        sweep_node(DATA_DIR, prefix=PREFIX, address_range=RANGE)


def _real_agent(cluster: Cluster) -> None:
    cluster._spawn("agent-n1", ["--data-dir", str(DATA_DIR), "agent", "--node", "n1", "--driver", "nspawn",
                                "--pool-size", "2Gi", "--address-range", RANGE, "--label", "disk=ssd",
                                "--lease-seconds", "3", "--resync-seconds", "2"], "Fleet agent is up")


def test_a_killed_real_agent_comes_back_without_recloning_or_restarting(cluster: Cluster, real_node: Path) -> None:
    from drivers.nspawn_process import Processes

    cluster.scheduler("scheduler")
    _real_agent(cluster)
    cluster.agent("n2")
    wait_for(lambda: len(cluster.nodes()) == 2, timeout=30, what="two nodes registered")
    cluster.psql(
        "INSERT INTO tenants (name, template, memory_bytes, disk_bytes, labels)"
        " SELECT 'fn-' || g, 'base', 67108864, 67108864, '{\"node.fleet/disk\": \"ssd\"}'"
        " FROM generate_series(1, 10) g"
    )
    wait_for(lambda: cluster.running() == 10, timeout=60, interval=0.3, what="10 tenants Running")
    assert cluster.per_node() == {"n1": 10}
    processes = Processes(real_node / "state")
    pids = {name: pid for name, pid in processes.running_tenants().items() if name.startswith(PREFIX)}
    assert len(pids) == 10

    cluster.kill("agent-n1")  # kill -9
    wait_for(lambda: set(cluster.ready_conditions("n1").values()) == {"Unknown"}, timeout=10,
             what="n1's tenants Ready=Unknown")
    assert {name: pid for name, pid in processes.running_tenants().items() if name.startswith(PREFIX)} == pids, \
        "the containers keep running while their agent is down"

    _real_agent(cluster)
    wait_for(lambda: set(cluster.ready_conditions("n1").values()) == {"True"}, timeout=30,
             what="n1's tenants Ready=True again")
    assert {name: pid for name, pid in processes.running_tenants().items() if name.startswith(PREFIX)} == pids
    clones = cluster.rows("SELECT tenant, count(*) FROM events WHERE reason = 'Cloned' GROUP BY tenant")
    assert dict(clones) == dict.fromkeys(pids, 1), "no tenant was cloned twice"
    assert cluster.per_node() == {"n1": 10}
    for name in pids:
        cluster.fleet("delete", "tenant", name)
    wait_for(lambda: cluster.rows("SELECT count(*) FROM tenants")[0][0] == 0, timeout=60,
             what="every tenant deleted by its agent")
