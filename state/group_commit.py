"""Group commit: concurrent callers' writes of one kind go to the database together, in one transaction.

Why it exists: SQLite takes one writer at a time, and a busy API spends most of a single-row write's time
on BEGIN, COMMIT and handing the write lock from thread to thread. Here the first caller to find the
writer free writes everything queued meanwhile, its own item included; the others find theirs done.
No thread of its own, no timer, no waiting to fill a batch: a lone caller writes at once. What it must
never do: let one item's failure fail another (the batch function answers each item on its own).
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


class GroupCommit(Generic[Item, Result]):
    """`submit(item)` returns `write(batch)`'s answer for that item, or raises its error."""

    def __init__(self, write: Callable[[Sequence[Item]], Sequence[Result | Exception]], *, limit: int = 256) -> None:
        self._write = write
        self._limit = limit
        self._queue: list[_Pending[Item, Result]] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()

    def submit(self, item: Item) -> Result:
        pending: _Pending[Item, Result] = _Pending(item)
        with self._queue_lock:
            self._queue.append(pending)
        while not pending.done:
            with self._writer:
                if pending.done:
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue[: self._limit], self._queue[self._limit :]
                self._run(batch)
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _run(self, batch: list[_Pending[Item, Result]]) -> None:
        try:
            answers = self._write([pending.item for pending in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(answers)} answers")
        except Exception as error:  # the whole batch failed (the store is down): every caller hears it
            for pending in batch:
                pending.error, pending.done = error, True
            return
        for pending, answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                pending.error = answer
            else:
                pending.result = answer
            pending.done = True
