"""`fleet exec` and the API's exec websocket share this: which tenant may be entered from here, the wake
hook, starting the driver's exec, and the audit events (who, the command, the exit code, how long).

An exec is allowed only on the node the tenant is bound to (the driver there holds its container) and only
while it runs. Every exec is recorded on the tenant: `ExecStarted` when the command starts (so a session
cut off by a crash is still on record), `ExecFinished` with its exit code and duration when it ends, and
`ExecFailed` when it could not start.

Each session holds a host helper process (about 10 MB) while it runs, so a process serving many (the API's
exec websocket, `ExecSlots`) keeps at most `ExecLimits` of them open: per tenant and in all. One over either
is refused at once, with a Warning `ExecRefused` on the tenant.

What it must never do: pass a command through a shell, or reach a tenant bound to another node.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from loguru import logger

from drivers import Driver, ExecProcess, ExecRequest
from reconciler import waking
from specs import Event, NotFound, PermanentError, Phase, TransientError
from specs.errors import FleetError
from state import Store
from state.records import DesiredRecord

WAKE_SECONDS = 60.0  # an exec into a sleeping tenant waits this long for it to be Running again
MAX_ARGUMENT_CHARS = 200  # per argument, in an event
MAX_ARGUMENTS = 50
MAX_MESSAGE_CHARS = 500
TOO_MANY_SESSIONS = "TooManyExecSessions"  # the reason of the TransientError an exec over a cap gets


@dataclass(frozen=True)
class ExecLimits:
    """Exec sessions one process keeps open at once (each holds a host helper process of ~10 MB)."""

    per_tenant: int = 8  # `fleet up --exec-sessions-per-tenant`
    total: int = 64  # `fleet up --exec-sessions`


def _sessions(count: int) -> str:
    return f"{count} exec session" + ("" if count == 1 else "s")


class ExecSlots:
    """The exec sessions open in this process, within its `ExecLimits`: a session takes a slot before it
    starts and gives it back when it ends. Thread-safe (sessions start in a thread pool)."""

    def __init__(self, limits: ExecLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def take(self, tenant: str) -> None:
        """A slot for a session into `tenant`; TransientError (reason TOO_MANY_SESSIONS) naming the cap it
        would go over and what to do."""
        with self._lock:
            if self._open[tenant] >= self.limits.per_tenant:
                raise TransientError(
                    f"tenant {tenant} already has {_sessions(self._open[tenant])} open, the most allowed per tenant "
                    "(fleet up --exec-sessions-per-tenant): end one of them, or retry once one has ended",
                    reason=TOO_MANY_SESSIONS)
            total = self._open.total()
            if total >= self.limits.total:
                raise TransientError(
                    f"this API already has {_sessions(total)} open, the most it allows (fleet up --exec-sessions): "
                    "end one of them, or retry once one has ended", reason=TOO_MANY_SESSIONS)
            self._open[tenant] += 1

    def give_back(self, tenant: str) -> None:
        with self._lock:
            self._open[tenant] -= 1
            if self._open[tenant] <= 0:
                del self._open[tenant]

    def open_sessions(self, tenant: str | None = None) -> int:
        """Sessions open now: into `tenant`, or in all."""
        with self._lock:
            return self._open.total() if tenant is None else self._open[tenant]


def ensure_awake(store: Store, record: DesiredRecord, who: str, *, timeout: float = WAKE_SECONDS) -> None:
    """THE place an exec wakes a sleeping tenant: the sleep is cleared in the store (`WakeRequested`, by
    `who`'s exec) and the exec waits until its reconciler has it Running again, for `timeout` seconds at
    most (then a TransientError saying where it is stuck). Any other phase but Running is refused."""
    phase = record.status.phase if record.status is not None else Phase.PENDING
    if phase == Phase.SLEEPING or (record.spec is not None and record.spec.asleep):
        waking.request_wake(store, record.name, f"{who} (fleet exec)")
        waking.wait_for_phase(store, record.name, frozenset({Phase.RUNNING}), timeout)
        return
    if phase != Phase.RUNNING:
        raise PermanentError(f"tenant {record.name} is {phase.value}, not Running: nothing to exec into",
                             reason="NotRunning")


def check_target(store: Store, node: str, name: str) -> DesiredRecord:
    """The tenant's record if an exec into it may start on `node`: it exists, is bound here, and runs."""
    record = store.desired(name)
    if record is None:
        raise NotFound(f"tenant {name} not found")
    if record.node is None:
        raise PermanentError(f"tenant {name} is not bound to a node yet: nothing to exec into", reason="NotRunning")
    if record.node != node:
        raise PermanentError(
            f"tenant {name} is on node {record.node}, not this node ({node}): run fleet exec on {record.node} "
            "(or against its API)", reason="OtherNode",
        )
    return record


def _shown(command: tuple[str, ...]) -> list[str]:
    parts = [part if len(part) <= MAX_ARGUMENT_CHARS else part[:MAX_ARGUMENT_CHARS] + "..." for part in command]
    return parts[:MAX_ARGUMENTS] + ([f"... {len(parts) - MAX_ARGUMENTS} more"] if len(parts) > MAX_ARGUMENTS else [])


def _message(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


@dataclass
class ExecSession:
    """A started exec: the process, and what its `ExecFinished` event will say."""

    store: Store
    node: str
    tenant: str
    who: str
    request: ExecRequest
    process: ExecProcess
    slots: ExecSlots | None = None  # the slot this session holds, given back when it finishes
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    def finish(self, exit_code: int | None, *, note: str = "") -> None:
        """Record `ExecFinished` once (exit_code None: the session ended before the command did, and the
        command was killed)."""
        if self.finished:
            return
        self.finished = True
        if self.slots is not None:
            self.slots.give_back(self.tenant)
        duration_ms = round((time.monotonic() - self.started) * 1000, 1)
        ended = "killed (session closed)" if exit_code is None else f"exit code {exit_code}"
        command = shlex.join(_shown(self.request.command))
        details = {"who": [self.who], "command": _shown(self.request.command), "tty": [str(self.request.tty).lower()],
                   "exit_code": [] if exit_code is None else [str(exit_code)]}
        event = Event(tenant=self.tenant, node=self.node, reason="ExecFinished", action="exec",
                      message=_message(f"{self.who} ran {command}: {ended}{note}"), duration_ms=duration_ms,
                      details=details)
        try:
            self.store.append_events([event])
        except FleetError as error:  # the exec happened; a store that cannot record it is logged, loudly
            logger.bind(tenant=self.tenant, who=self.who, error=str(error)).error("Could not record an exec")
        logger.bind(tenant=self.tenant, node=self.node, who=self.who, exit_code=exit_code,
                    ms=duration_ms).info("Finished exec")


def start(store: Store, driver: Driver, node: str, name: str, request: ExecRequest, who: str, *,
          slots: ExecSlots | None = None) -> ExecSession:
    """Check the target, take a slot of `slots` (over a cap: record `ExecRefused` and raise), wake hook, start
    the command through the driver, record `ExecStarted` (or `ExecFailed` and re-raise)."""
    record = check_target(store, node, name)
    command = shlex.join(_shown(request.command))
    details = {"who": [who], "command": _shown(request.command), "tty": [str(request.tty).lower()]}
    if slots is not None:
        _take_slot(store, slots, node, name, who, details)
    try:
        process = _started(store, driver, node, record, request, who, command, details)
    except BaseException:
        if slots is not None:
            slots.give_back(name)
        raise
    logger.bind(tenant=name, node=node, who=who, tty=request.tty).info("Started exec")
    return ExecSession(store, node, name, who, request, process, slots=slots)


def _take_slot(store: Store, slots: ExecSlots, node: str, name: str, who: str, details: dict[str, list[str]]) -> None:
    try:
        slots.take(name)
    except TransientError as refusal:
        logger.bind(tenant=name, node=node, who=who, error=str(refusal)).warning("Refused an exec")
        try:
            store.append_events([Event(tenant=name, node=node, type="Warning", reason="ExecRefused", action="exec",
                                       message=_message(f"{who} may not exec now: {refusal}"), details=details)])
        except FleetError as error:
            logger.bind(tenant=name, error=str(error)).warning("Could not record a refused exec")
        raise


def _started(store: Store, driver: Driver, node: str, record: DesiredRecord, request: ExecRequest, who: str,
             command: str, details: dict[str, list[str]]) -> ExecProcess:
    name = record.name
    try:
        ensure_awake(store, record, who)
        process = driver.exec(name, request)
    except FleetError as error:
        store.append_events([Event(tenant=name, node=node, type="Warning", reason="ExecFailed", action="exec",
                                   message=_message(f"{who} could not run {command}: {error}"), details=details)])
        raise
    try:
        store.append_events([Event(tenant=name, node=node, reason="ExecStarted", action="exec",
                                   message=_message(f"{who} ran {command}" + (" (terminal)" if request.tty else "")),
                                   details=details)])
    except BaseException:
        process.close()  # nothing runs unrecorded
        raise
    return process
