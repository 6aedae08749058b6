"""Undo the steps of a multi-step ensure, in reverse, when a later step fails (LXD's `revert` pattern).

    with Reverter() as revert:
        make_a(); revert.add(undo_a)
        make_b(); revert.add(undo_b)
        revert.success()      # keep everything
    # an exception before success() runs undo_b, then undo_a, and re-raises

Undo steps must be idempotent and may fail: a failed undo is logged and the others still run (the next
reconcile pass converges whatever is left; the reverter only keeps a failed ensure from leaving half-made
parts behind until then).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from loguru import logger


class Reverter:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def success(self) -> None:
        self._undo.clear()

    def __enter__(self) -> Reverter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None or not isinstance(error, Exception):
            return  # success, or a simulated kill -9 (BaseException): a real crash undoes nothing either
        for what, undo in reversed(self._undo):
            try:
                undo()
            except Exception as failure:  # keep undoing the rest; the next pass converges
                logger.bind(step=what, error=str(failure)).warning("Could not undo a step after a failure")
        self._undo.clear()
