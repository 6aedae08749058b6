"""The pure diff: what must be done to turn what the host has into what the record asks for.

No I/O, no clock, no randomness: the same inputs always give the same list, and applying that list to
the observed state gives a state for which the plan is empty (a property test holds it to that).
There are no separate create, update and delete paths: every case is one comparison.
"""

from reconciler.actions import Action, ApplyNetwork, ApplyResources, Clone, Delete, Start, Stop
from specs import Observed, ResolvedSpec


def plan(desired: ResolvedSpec, observed: Observed | None) -> list[Action]:
    if desired.deleting:
        if observed is None:
            return []
        return [Stop(), Delete()] if observed.running else [Delete()]
    if desired.paused:
        return []  # paused: observe only
    # Start comes before the network: a container needs only its (empty) network namespace to start, so
    # its network is set up while it boots; the driver keeps it unreachable until its firewall is in place.
    # Asleep: the container is stopped and everything else kept as the spec says, so a wake is one start.
    asleep = desired.asleep
    if observed is None:
        return [
            Clone(desired.template),
            ApplyResources(desired.resources),
            *([] if asleep else [Start()]),
            ApplyNetwork(desired.network),
        ]
    actions: list[Action] = []
    if observed.resources != desired.resources:
        actions.append(ApplyResources(desired.resources))
    if observed.running and asleep:
        actions.append(Stop())
    elif observed.running and observed.restart_reason:
        actions += [Stop(), Start()]
    elif not observed.running and not asleep:
        actions.append(Start())
    # Egress left unset (a spec built without a template's default) is none, as a host enforces it.
    if observed.network.in_force() != desired.network.in_force() or observed.address is None:
        actions.append(ApplyNetwork(desired.network))
    return actions
