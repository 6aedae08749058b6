"""The one create path: every API create goes through one writer thread that writes what is queued in one
transaction, answers each create on its own, and is also what a create with an `Idempotency-Key` uses.

Interleavings are forced: a hook on the store's engine holds the first batch inside its INSERT until the
test has queued the next creates behind it."""

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from reconciler.web.app import create_app
from reconciler.web.context import WebContext
from reconciler.web.create_batcher import CreateWriter
from reconciler.web.server import BackgroundServer, Listen
from state import AlreadyExists, ApplyResult, Store
from state.access import Role
from state.errors import UnknownReference
from tests.helpers import tenant, wait_for

pytestmark = pytest.mark.both_stores


def _inserts(store: Store) -> list[str]:
    """The name of the thread that ran each INSERT INTO tenants, in order."""
    threads: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TENANTS"):
            threads.append(threading.current_thread().name)

    event.listen(store.engine, "before_cursor_execute", seen)
    return threads


def test_creates_queued_while_a_batch_is_written_share_the_next_batch_and_get_their_own_answers(
    store: Store,
) -> None:
    store.apply_tenant(tenant("taken"))
    writer = CreateWriter(store)
    inserts = _inserts(store)
    first_held, release_first = threading.Event(), threading.Event()

    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TENANTS") and not first_held.is_set():
            first_held.set()
            release_first.wait(10)

    event.listen(store.engine, "before_cursor_execute", hold)

    async def creates() -> list[ApplyResult | BaseException]:
        first = asyncio.ensure_future(writer.create(tenant("first")))
        assert await asyncio.to_thread(first_held.wait, 10), "the first batch reached its INSERT"
        queued = [tenant("second"), tenant("taken"), tenant("third"), tenant("orphan", template="nope")]
        others = [asyncio.ensure_future(writer.create(each)) for each in queued]
        await asyncio.to_thread(wait_for, lambda: writer._queue.qsize() == len(queued), timeout=10,
                                what="the creates queued behind the first batch")
        release_first.set()
        return await asyncio.gather(first, *others, return_exceptions=True)

    answers = asyncio.run(creates())
    assert len(inserts) == 2, "one INSERT for the first create, one for all four queued behind it"
    created = {answer.name: answer.outcome.value for answer in answers if isinstance(answer, ApplyResult)}
    assert created == {"first": "created", "second": "created", "third": "created"}
    assert isinstance(answers[2], AlreadyExists) and "taken already exists" in str(answers[2])
    assert isinstance(answers[4], UnknownReference) and answers[4].field == "spec.template"
    assert sorted(t.metadata.name for t in store.list_tenants().items) == ["first", "second", "taken", "third"]


def test_a_batch_that_fails_as_a_whole_fails_every_create_in_it(store: Store) -> None:
    writer = CreateWriter(store)

    def down(*_args: Any) -> None:
        raise ConnectionError("the store is down")

    event.listen(store.engine, "before_cursor_execute", down)

    async def creates() -> list[ApplyResult | BaseException]:
        return await asyncio.gather(*(writer.create(tenant(f"t{n}")) for n in range(3)), return_exceptions=True)

    answers = asyncio.run(creates())
    assert [str(answer) for answer in answers] == ["the store is down"] * 3


@pytest.fixture
def api(store: Store) -> Iterator[tuple[str, str]]:
    context = WebContext(store)
    token = context.access.create_token(name="writer", role=Role.OPERATOR)[1]
    server = BackgroundServer(create_app(context), Listen("127.0.0.1", 0), name="API").start()
    yield f"http://{server.listen}", token
    server.stop()


def test_a_create_with_an_idempotency_key_is_written_by_the_same_writer_as_one_without(
    store: Store, api: tuple[str, str]
) -> None:
    url, token = api
    inserts = _inserts(store)
    document = {"kind": "Tenant", "metadata": {"name": "keyed"}, "spec": {"template": "base"}}
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
        keyed = client.post("/api/v1/tenants", json=document, headers={"idempotency-key": "signup-1"})
        replayed = client.post("/api/v1/tenants", json=document, headers={"idempotency-key": "signup-1"})
        plain = client.post("/api/v1/tenants", json={**document, "metadata": {"name": "plain"}})
        taken = client.post("/api/v1/tenants", json=document, headers={"idempotency-key": "signup-2"})
    assert (keyed.status_code, replayed.status_code, plain.status_code) == (201, 201, 201)
    assert replayed.json() == keyed.json() and replayed.headers.get("idempotent-replayed") == "true"
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "metadata.name"
    assert inserts == ["tenant-creates", "tenant-creates"], "one INSERT each, both by the writer thread"
