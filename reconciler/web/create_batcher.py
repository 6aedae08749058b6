"""Tenant creates from the event loop, written by one thread in batches (group commit): the one path
every API create takes, sent with an `Idempotency-Key` or without.

Why it exists: a create's route would otherwise hop to the threadpool and take the store's write lock
alone, one transaction per request; under load most of its time is that hand-off. Here the event loop
queues the create and awaits a future; one writer thread takes everything queued, writes it in one
transaction (`Store.create_tenants_each`) and settles the futures in one call back to the loop. The
thread exits after a second without work and is started again by the next create. A create with an
idempotency key holds its key in a worker thread and awaits the same queue from there. What it must
never do: block the event loop, or let one create's failure fail another's.
"""

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass

from specs import Tenant
from state import ApplyResult, Store

IDLE_SECONDS = 1.0
BATCH_LIMIT = 256


@dataclass(frozen=True)
class _Create:
    tenant: Tenant
    future: "asyncio.Future[ApplyResult]"
    loop: asyncio.AbstractEventLoop


_Settled = tuple["asyncio.Future[ApplyResult]", ApplyResult | BaseException]


def _settle(settled: list[_Settled]) -> None:
    for future, answer in settled:
        if future.done():  # the client went away meanwhile
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


class CreateWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[_Create] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def create(self, tenant: Tenant) -> ApplyResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ApplyResult] = loop.create_future()
        self._queue.put(_Create(tenant, future, loop))
        self._ensure_running()
        return await future

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tenant-creates", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # nothing arrived while we decided: exit; the next create restarts us
                        self._thread = None
                        return
                continue
            batch = [first]
            while len(batch) < BATCH_LIMIT:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[_Create]) -> None:
        answers: list[ApplyResult | BaseException]
        try:
            answers = list(self.store.create_tenants_each([create.tenant for create in batch]))
        except Exception as error:  # the store is down: every create in the batch hears it
            answers = [error] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
        for create, answer in zip(batch, answers, strict=True):
            by_loop.setdefault(create.loop, []).append((create.future, answer))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop was closed: its server stopped
                loop.call_soon_threadsafe(_settle, settled)
