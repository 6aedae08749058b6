"""The reverter undoes a failed multi-step ensure in reverse, and nothing after success or a simulated kill."""

import pytest

from drivers.fake import Crash
from drivers.reverter import Reverter


def test_a_failure_undoes_the_steps_in_reverse_and_a_failing_undo_does_not_stop_the_rest() -> None:
    undone: list[str] = []

    def broken() -> None:
        undone.append("b")
        raise OSError("busy")

    with pytest.raises(ValueError, match="step c"), Reverter() as revert:
        revert.add("a", lambda: undone.append("a"))
        revert.add("b", broken)
        raise ValueError("step c failed")
    assert undone == ["b", "a"]


def test_success_keeps_everything_and_a_kill_undoes_nothing() -> None:
    undone: list[str] = []
    with Reverter() as revert:
        revert.add("a", lambda: undone.append("a"))
        revert.success()
    with pytest.raises(Crash), Reverter() as revert:
        revert.add("a", lambda: undone.append("a"))
        raise Crash("kill -9")
    assert undone == []
