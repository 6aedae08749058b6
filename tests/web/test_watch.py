"""The watch stream as a dashboard or a billing system follows it: server-sent events, resumable."""

import contextlib
import json
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
from state.access import Role
from state.housekeeping import Housekeeping, Retention
from tests.helpers import tenant, wait_for
from tests.web.conftest import Web


def _follow(web: Web, params: dict[str, Any], seen: list[dict[str, Any]], stop: threading.Event) -> None:
    headers = {"authorization": f"Bearer {web.tokens[Role.VIEWER]}"}
    with contextlib.suppress(httpx.RemoteProtocolError), httpx.stream(  # the server stops when the test ends
        "GET", f"{web.api}/api/v1/watch", params=params, headers=headers, timeout=10
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append({"event": kind, **json.loads(line.removeprefix("data: "))})
            if stop.is_set():
                return


def test_watch_streams_changes_until_running_and_deletion_and_resumes_from_a_revision(web: Web) -> None:
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(web, {"revision": 0}, seen, stop), daemon=True)
    follower.start()
    with web.client() as client:
        assert client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "watched"},
                                                    "spec": {"template": "base"}}).status_code == 201
        wait_for(lambda: any(e.get("phase") == "Running" for e in seen), what="a Running change on the stream")
        resume_from = max(e["revision"] for e in seen if e["event"] == "tenant")
        client.delete("/api/v1/tenants/watched")
        wait_for(lambda: {"event": "deleted", "name": "watched"} in seen, what="the deletion on the stream")
    stop.set()
    later: list[dict[str, Any]] = []
    with web.client() as client:
        client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "next"},
                                             "spec": {"template": "base"}})
    resumed = threading.Thread(target=_follow, args=(web, {"revision": resume_from}, later, threading.Event()),
                               daemon=True)
    resumed.start()
    wait_for(lambda: any(e.get("name") == "next" for e in later), what="the resumed stream to see the new tenant")
    assert all(e.get("revision", resume_from + 1) > resume_from for e in later)
    assert web.client().get("/api/v1/watch", headers={"authorization": ""}).status_code == 401


def test_a_watcher_resuming_after_a_deletion_it_missed_is_told_the_tenant_is_gone(web: Web) -> None:
    with web.client() as client:
        assert client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "brief"},
                                                    "spec": {"template": "base"}}).status_code == 201
        web.wait_running("brief")
        last_seen = client.get("/healthz").json()["revision"]  # where a disconnected watcher stopped
        assert client.delete("/api/v1/tenants/brief").status_code == 202
        wait_for(lambda: client.get("/api/v1/tenants/brief").status_code == 404, what="brief to be gone")
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(web, {"revision": last_seen}, seen, stop), daemon=True)
    follower.start()
    wait_for(lambda: {"event": "deleted", "name": "brief"} in seen, what="the missed deletion on the resumed stream")
    stop.set()
    deleted_at = seen.index({"event": "deleted", "name": "brief"})
    assert all(e["name"] != "brief" for e in seen[deleted_at + 1:]), "nothing about brief after its deletion"


# -- one snapshot per poll, and a horizon for pruned deletions; on both stores, with no controller ---------


@dataclass
class Api:
    url: str
    token: str
    store: Store

    def stream(self, revision: int, seen: list[tuple[str, int, dict[str, Any]]], until: Callable[[], bool]) -> None:
        """Follow the stream from `revision`, appending (event, id, data), until `until()` after an event."""
        headers = {"authorization": f"Bearer {self.token}"}
        with contextlib.suppress(httpx.RemoteProtocolError), httpx.stream(
            "GET", f"{self.url}/api/v1/watch", params={"revision": revision}, headers=headers, timeout=10
        ) as response:
            kind, at = "", 0
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("id: "):
                    at = int(line.removeprefix("id: "))
                elif line.startswith("data: "):
                    seen.append((kind, at, json.loads(line.removeprefix("data: "))))
                    if until():
                        return


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    context = WebContext(store)
    token = context.access.create_token(name="watcher", role=Role.VIEWER)[1]
    server = BackgroundServer(create_app(context), Listen("127.0.0.1", 0), name="API").start()
    yield Api(f"http://{server.listen}", token, store)
    server.stop()


def _once_before_a_feed_read(store: Store, write: Callable[[], None]) -> None:
    """The next time a watcher reads the tombstones, first let another thread write and commit: the
    interleaving that made a watcher skip a change committed between its two reads."""
    armed = threading.Event()
    armed.set()

    def interleave(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if armed.is_set() and statement.lstrip().upper().startswith("SELECT") and "tenant_tombstones" in statement:
            armed.clear()
            writer = threading.Thread(target=write)
            writer.start()
            writer.join(30)

    event.listen(store.engine, "before_cursor_execute", interleave)


@pytest.mark.both_stores
def test_a_change_committed_while_the_watcher_reads_is_never_skipped(api: Api) -> None:
    store = api.store
    store.apply_tenant(tenant("doomed"))
    store.request_delete("doomed")
    start = store.current_revision()

    def writers() -> None:  # two other writers, interleaved with the watcher's read
        store.apply_tenant(tenant("late"))
        store.finalize_delete("doomed")

    _once_before_a_feed_read(store, writers)
    seen: list[tuple[str, int, dict[str, Any]]] = []
    api.stream(start, seen, until=lambda: seen[-1][0] == "deleted")

    assert [(kind, data["name"]) for kind, _at, data in seen] == [("tenant", "late"), ("deleted", "doomed")]
    revisions = [at for _kind, at, _data in seen]
    assert revisions == sorted(revisions) and revisions[0] > start


@pytest.mark.both_stores
def test_a_watcher_behind_the_pruned_deletions_gets_410_gone_and_a_fresh_start_still_works(api: Api) -> None:
    store = api.store
    store.apply_tenants([tenant("old"), tenant("kept")])
    behind = store.current_revision()
    store.request_delete("old")
    store.finalize_delete("old")
    pruned = Housekeeping(store).prune(Retention(), now=datetime.now(UTC) + timedelta(days=8))
    assert pruned.tombstones == 1 and pruned.horizon > behind
    headers = {"authorization": f"Bearer {api.token}"}

    gone = httpx.get(f"{api.url}/api/v1/watch", params={"revision": behind}, headers=headers, timeout=10)
    assert gone.status_code == 410 and gone.json()["error"]["field"] == "revision"
    assert "list the tenants again" in gone.json()["error"]["rule"]

    seen: list[tuple[str, int, dict[str, Any]]] = []
    api.stream(0, seen, until=lambda: any(data["name"] == "kept" for _kind, _at, data in seen))
    assert ("tenant", "kept") in [(kind, data["name"]) for kind, _at, data in seen], "revision 0: a fresh start"
    at_horizon: list[tuple[str, int, dict[str, Any]]] = []
    store.apply_tenant(tenant("new"))
    api.stream(pruned.horizon, at_horizon, until=lambda: True)
    assert [data["name"] for _kind, _at, data in at_horizon] == ["new"]


@pytest.mark.both_stores
def test_an_open_stream_that_falls_behind_the_pruned_deletions_is_told_gone(api: Api) -> None:
    store = api.store
    store.apply_tenant(tenant("brief"))
    store.request_delete("brief")
    start = store.current_revision()

    def finalize_and_prune() -> None:  # between two polls: the tombstone is made and pruned at once
        store.finalize_delete("brief")
        Housekeeping(store).prune(Retention(), now=datetime.now(UTC) + timedelta(days=8))

    _once_before_a_feed_read(store, finalize_and_prune)
    seen: list[tuple[str, int, dict[str, Any]]] = []
    api.stream(start, seen, until=lambda: True)
    assert [kind for kind, _at, _data in seen] == ["gone"]
    assert seen[0][2]["revision"] == start and seen[0][2]["horizon"] > start
