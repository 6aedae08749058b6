"""The watch stream as a dashboard or a billing system follows it: server-sent events, resumable."""

import contextlib
import json
import threading
from typing import Any

import httpx

from state.access import Role
from tests.helpers import wait_for
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
