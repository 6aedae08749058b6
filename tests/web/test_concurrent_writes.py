"""Concurrent writes through the API on both stores, with no controller: PATCH is a compare-and-set against
what it read (`If-Match`: the generation), and two requests with one `Idempotency-Key` make one write.

Interleavings are forced, not hoped for: a hook on the store's engine holds the first writer inside its
write until the second request has read what it will act on."""

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from reconciler.web.app import create_app
from reconciler.web.context import WebContext
from reconciler.web.server import BackgroundServer, Listen
from state import Store
from state.access import Access, Role, StoredResponse
from state.access_schema import IDEMPOTENCY_KEYS
from tests.helpers import tenant

pytestmark = pytest.mark.both_stores


@dataclass
class Api:
    url: str
    token: str
    store: Store

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=30)


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    context = WebContext(store)
    token = context.access.create_token(name="writer", role=Role.OPERATOR)[1]
    server = BackgroundServer(create_app(context), Listen("127.0.0.1", 0), name="API").start()
    yield Api(f"http://{server.listen}", token, store)
    server.stop()


def hold_first_writer(store: Store, writes: str, until_read: str) -> threading.Event:
    """The first statement starting with `writes` waits, inside its transaction, until another thread has
    run a SELECT mentioning `until_read` (or 10 s pass). Returns an event set once a writer is held."""
    held = threading.Event()
    other_read = threading.Event()
    holder: list[int] = []

    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not holder and " ".join(statement.split()).upper().startswith(writes.upper()):
            holder.append(threading.get_ident())
            held.set()
            other_read.wait(10)

    def release(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:  # once the read has run
        text = " ".join(statement.split()).upper()
        if held.is_set() and threading.get_ident() != holder[0] and text.startswith("SELECT") and (
            until_read.upper() in text
        ):
            other_read.set()

    event.listen(store.engine, "before_cursor_execute", hold)
    event.listen(store.engine, "after_cursor_execute", release)
    return held


def in_thread(call: Callable[[], httpx.Response], answers: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread


def test_two_concurrent_patches_both_land_and_neither_change_is_lost(api: Api) -> None:
    api.store.apply_tenant(tenant("acme"))
    held = hold_first_writer(api.store, "UPDATE tenants", until_read="FROM tenants")
    first: list[httpx.Response] = []
    second: list[httpx.Response] = []
    with api.client() as one, api.client() as two:
        a = in_thread(lambda: one.patch("/api/v1/tenants/acme", json={"spec": {"resources": {"cpu": "250m"}}}),
                      first)
        assert held.wait(10), "the first patch reached its write"
        # Reads generation 1 while the first patch's write is not committed yet.
        b = in_thread(lambda: two.patch("/api/v1/tenants/acme", json={"spec": {"resources": {"pids": 99}}}),
                      second)
        a.join(30)
        b.join(30)
    assert first[0].status_code == 200 and second[0].status_code == 200, second[0].text
    stored = api.store.get_tenant("acme")
    assert stored is not None
    assert (stored.spec.resources.cpu, stored.spec.resources.pids) == (250, 99), "both changes are there"
    assert stored.metadata.generation == 3


def test_a_patch_based_on_an_older_generation_is_409_and_writes_nothing(api: Api) -> None:
    api.store.apply_tenant(tenant("acme"))
    with api.client() as client:
        read = client.get("/api/v1/tenants/acme")
        assert read.headers["etag"] == '"1"'
        changed = client.patch("/api/v1/tenants/acme", json={"spec": {"resources": {"cpu": "250m"}}},
                               headers={"if-match": read.headers["etag"]})
        assert changed.status_code == 200 and changed.json()["generation"] == 2
        stale = client.patch("/api/v1/tenants/acme", json={"spec": {"resources": {"pids": 99}}},
                             headers={"if-match": read.headers["etag"]})
        assert stale.status_code == 409, stale.text
        assert stale.json()["error"]["field"] == "If-Match" and "generation 2, not 1" in stale.json()["error"]["rule"]
        assert client.get("/api/v1/tenants/acme").json()["spec"]["resources"].get("pids") is None
        assert client.patch("/api/v1/tenants/acme", json={"labels": {"a": "b"}},
                            headers={"if-match": "nope"}).status_code == 422


def test_a_patch_with_if_match_that_loses_a_race_is_409_and_the_winner_stands(api: Api) -> None:
    api.store.apply_tenant(tenant("acme"))
    held = hold_first_writer(api.store, "UPDATE tenants", until_read="FROM tenants")
    first: list[httpx.Response] = []
    second: list[httpx.Response] = []
    with api.client() as one, api.client() as two:
        a = in_thread(lambda: one.patch("/api/v1/tenants/acme", json={"spec": {"resources": {"cpu": "250m"}}},
                                        headers={"if-match": '"1"'}), first)
        assert held.wait(10)
        b = in_thread(lambda: two.patch("/api/v1/tenants/acme", json={"spec": {"resources": {"pids": 99}}},
                                        headers={"if-match": '"1"'}), second)
        a.join(30)
        b.join(30)
    assert (first[0].status_code, second[0].status_code) == (200, 409), second[0].text
    stored = api.store.get_tenant("acme")
    assert stored is not None and (stored.spec.resources.cpu, stored.spec.resources.pids) == (250, None)


def test_two_concurrent_creates_with_one_idempotency_key_both_get_the_first_answer(api: Api) -> None:
    held = hold_first_writer(api.store, "INSERT INTO tenants", until_read="FROM idempotency_keys")
    document = {"kind": "Tenant", "metadata": {"name": "once"}, "spec": {"template": "base"}}
    headers = {"idempotency-key": "signup-42"}
    first: list[httpx.Response] = []
    second: list[httpx.Response] = []
    with api.client() as one, api.client() as two:
        a = in_thread(lambda: one.post("/api/v1/tenants", json=document, headers=headers), first)
        assert held.wait(10), "the first create reached its write"
        b = in_thread(lambda: two.post("/api/v1/tenants", json=document, headers=headers), second)
        a.join(30)
        b.join(30)
    assert (first[0].status_code, second[0].status_code) == (201, 201), second[0].text
    assert first[0].json() == second[0].json()
    assert second[0].headers.get("idempotent-replayed") == "true"
    assert [t.metadata.name for t in api.store.list_tenants().items] == ["once"]


def test_a_request_whose_answer_failed_releases_its_key_for_the_next_one(api: Api) -> None:
    api.store.apply_tenant(tenant("taken"))
    document = {"kind": "Tenant", "metadata": {"name": "taken"}, "spec": {"template": "base"}}
    with api.client() as client:
        refused = client.post("/api/v1/tenants", json=document, headers={"idempotency-key": "k1"})
        assert refused.status_code == 409
        api.store.request_delete("taken")
        api.store.finalize_delete("taken")
        again = client.post("/api/v1/tenants", json=document, headers={"idempotency-key": "k1"})
        assert again.status_code == 201, "an error is not frozen into the key"


def test_a_key_claimed_by_a_request_that_died_is_taken_over_and_a_live_claim_is_waited_for(api: Api) -> None:
    access = Access(api.store)
    assert access.claim_key(principal="p", key="live", request_hash="h") is None, "the first request holds it"
    waiting = access.claim_key(principal="p", key="live", request_hash="h")
    assert waiting is not None and waiting.in_progress, "a second one is told to wait"
    with api.store.engine.begin() as conn:  # a claim whose request was killed two minutes ago
        conn.execute(IDEMPOTENCY_KEYS.insert().values(principal="p", key="dead", request_hash="h", status_code=0,
                                                      response_body="", created_at=datetime.now(UTC) - timedelta(
                                                          minutes=2)))
    assert access.claim_key(principal="p", key="dead", request_hash="h") is None, "taken over"
    stored = access.store_response(principal="p", key="dead", response=StoredResponse("h", 201, '{"ok":1}'))
    assert stored.status_code == 201
    assert access.claim_key(principal="p", key="dead", request_hash="h") == stored, "then answered for good"
