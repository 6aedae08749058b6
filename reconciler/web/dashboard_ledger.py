"""The fleet ledger per billing plan: how many tenants each plan has, what they cost (each tenant's share
of its node's flat monthly price), and what they use now (CPU seconds, memory, exclusive disk, network),
summed from the usage the driver read.

Why apart from the page's markup and routes: the sums are the numbers a billing system meters, so they are
pure arithmetic here, tested without a server. Usage is read where a driver runs: on `fleet up` the API's
own process reads its node's host; `fleet api` alone runs no driver, and another node's tenants are read by
that node's agent (`fleet agent --metrics-listen`). A plan's usage therefore covers only the tenants of the
nodes read here, and the ledger says which; it never shows a zero for what it could not read. What it must
never do: read the store or the host itself (the dashboard hands it what it read).
"""

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from specs import Usage
from state.dashboard import PlanTally


@dataclass(frozen=True)
class UsageTotals:
    """Usage summed over tenants: counters (CPU, network) and what is held now (memory, disk)."""

    tenants: int = 0  # how many tenants' usage was read and summed
    cpu_seconds: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0
    network_in_bytes: int = 0
    network_out_bytes: int = 0

    def plus(self, usage: Usage) -> "UsageTotals":
        return UsageTotals(
            self.tenants + 1, self.cpu_seconds + usage.cpu_seconds, self.memory_bytes + usage.memory_bytes,
            self.disk_bytes + usage.disk_bytes, self.network_in_bytes + usage.network_in_bytes,
            self.network_out_bytes + usage.network_out_bytes,
        )


@dataclass(frozen=True)
class PlanLine:
    plan: str | None  # None: tenants no live subscription owns
    tenants: int
    priced_tenants: int  # of them, those bound to a node with a price
    cost_cents: float | None  # their shares of their nodes' prices a month; None when none is priced
    usage: UsageTotals | None  # None when no usage of its tenants was read here


@dataclass(frozen=True)
class PlanLedger:
    lines: list[PlanLine] = field(default_factory=list)
    usage_nodes: tuple[str, ...] = ()  # the nodes whose tenants' usage was read here (empty: none)
    # (a plan none of whose tenants is on those nodes has no usage line: its nodes' agents serve it)
    usage_error: str = ""  # why the usage of a node that runs here could not be read, if it could not


class UsageSample:
    """The usage the ledger last read, reused for `max_age_seconds`. A dashboard refreshes its panels up to
    once a second per open page, and a real node's read costs a few file reads per tenant (about 1-2 ms a
    tenant with nspawn): reading every tenant's cgroups at each refresh of each page would load the node
    for figures that move by seconds. Concurrent refreshes wait for one read rather than each making one.
    One per process (the web context holds it)."""

    def __init__(self, max_age_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._usage: list[Usage] = []

    def read(self, fresh: Callable[[], list[Usage]]) -> list[Usage]:
        """What `fresh()` returned, if that was less than `max_age_seconds` ago; else `fresh()` now."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.max_age_seconds:
                self._usage = fresh()  # an error leaves the last sample unused: the next call reads again
                self._read_at = now
            return self._usage


def plan_ledger(
    tallies: Iterable[PlanTally],
    node_tenants: Mapping[str, int],
    prices: Mapping[str, int],
    usage: Iterable[Usage] | None,
    plans: Mapping[str, str],
) -> list[PlanLine]:
    """One line per plan (tenants without one last): `tallies` are tenants by plan and node, `node_tenants`
    every node's tenant count (a tenant's cost is its node's price over that), `prices` in cents by node,
    `usage` what was read (None: nothing could be), `plans` the plan of each tenant a subscription owns."""
    tenants: dict[str | None, int] = {}
    priced: dict[str | None, int] = {}
    cost: dict[str | None, float] = {}
    for tally in tallies:
        tenants[tally.plan] = tenants.get(tally.plan, 0) + tally.tenants
        price = prices.get(tally.node or "")
        if price is not None and node_tenants.get(tally.node or ""):
            priced[tally.plan] = priced.get(tally.plan, 0) + tally.tenants
            cost[tally.plan] = cost.get(tally.plan, 0.0) + tally.tenants * price / node_tenants[tally.node or ""]
    sums: dict[str | None, UsageTotals] | None = None
    if usage is not None:
        sums = {}
        for item in usage:
            plan = plans.get(item.tenant)
            sums[plan] = sums.get(plan, UsageTotals()).plus(item)
            tenants.setdefault(plan, 0)
    order = sorted(tenants, key=lambda plan: (plan is None, plan or ""))
    # A plan none of whose tenants was read has no usage here (None), not zeros.
    return [
        PlanLine(plan, tenants[plan], priced.get(plan, 0), cost.get(plan), None if sums is None else sums.get(plan))
        for plan in order
    ]


__all__ = ["PlanLedger", "PlanLine", "UsageSample", "UsageTotals", "plan_ledger"]
