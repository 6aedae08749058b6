"""Group commit: concurrent writes share one batch, and each caller gets its own answer or error."""

import threading
from collections.abc import Sequence

import pytest

from state.group_commit import GroupCommit
from tests.helpers import wait_for


def test_callers_arriving_while_a_batch_is_written_share_the_next_batch_and_get_their_own_answers() -> None:
    first_started, release_first = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int | Exception]:
        batches.append(list(items))
        if items == [0]:
            first_started.set()
            release_first.wait(5)
        return [ValueError(f"{item} is odd") if item % 2 else item * 10 for item in items]

    commit: GroupCommit[int, int] = GroupCommit(write)
    answers: dict[int, object] = {}

    def submit(item: int) -> None:
        try:
            answers[item] = commit.submit(item)
        except ValueError as error:
            answers[item] = str(error)

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    assert first_started.wait(5)
    others = [threading.Thread(target=submit, args=(i,)) for i in range(1, 6)]
    for thread in others:
        thread.start()
    wait_for(lambda: len(commit._queue) == 5, timeout=5, what="five callers queued behind the first batch")
    release_first.set()
    for thread in [first, *others]:
        thread.join(5)
    assert len(batches) == 2 and batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5]
    assert answers == {0: 0, 1: "1 is odd", 2: 20, 3: "3 is odd", 4: 40, 5: "5 is odd"}


def test_a_batch_that_fails_as_a_whole_fails_every_caller_in_it() -> None:
    def write(items: Sequence[int]) -> list[int | Exception]:
        raise ConnectionError("the store is down")

    commit: GroupCommit[int, int] = GroupCommit(write)
    with pytest.raises(ConnectionError, match="the store is down"):
        commit.submit(1)
