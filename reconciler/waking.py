"""Putting a tenant to sleep and waking it on request (`fleet sleep`/`fleet wake`, the API, `fleet exec`):
the store write with its event, and waiting for the reconciler to get there.

The gateway's idle rule and its wake on a visitor's request live in `reconciler.web.gateway_sleep`; its
wake clears the sleep here too (`request_wake`), so every path records who asked the same way.
"""

import time

from specs import Event, NotFound, Phase, Tenant, TransientError
from state import Store

POLL_SECONDS = 0.02


def request_sleep(store: Store, name: str, who: str) -> bool:
    """Mark the tenant asleep (its reconciler stops the container, keeps all else). False when it already
    was, or is being deleted; NotFound when there is no such tenant."""
    event = Event(tenant=name, reason="SleepRequested", message=f"put to sleep by {who}")
    return store.set_asleep(name, True, event)


def request_wake(store: Store, name: str, who: str) -> bool:
    """Clear the sleep (its reconciler starts the container), with a `WakeRequested` event "woken by WHO". False
    when it was awake already (a compare-and-set: of many callers waking one tenant at once, one writes and
    records the event); NotFound when there is no such tenant."""
    event = Event(tenant=name, reason="WakeRequested", message=f"woken by {who}")
    return store.set_asleep(name, False, event)


def wait_for_phase(store: Store, name: str, phases: frozenset[Phase], timeout: float) -> Tenant:
    """The tenant once its status is in `phases`; TransientError naming where it is stuck after `timeout`
    seconds, NotFound when it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        tenant = store.get_tenant(name)
        if tenant is None:
            raise NotFound(f"tenant {name} not found")
        phase = tenant.status.phase if tenant.status else Phase.PENDING
        if phase in phases:
            return tenant
        if time.monotonic() > deadline:
            wanted = " or ".join(sorted(p.value for p in phases))
            raise TransientError(f"tenant {name} is {phase.value}, not {wanted}, after {timeout:g}s; "
                                 f"see fleet describe tenant {name}")
        time.sleep(POLL_SECONDS)  # polling a condition with a deadline
