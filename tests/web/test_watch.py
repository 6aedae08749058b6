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
