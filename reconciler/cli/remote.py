"""`fleet --server URL`: the tenant verbs (get, apply, delete, pause, resume) over the HTTP API instead of
on the store, as kubectl is a client of its API server. For an operator's laptop (no database credentials,
only a token) and for speed: this module loads neither pydantic nor the store, since the server validates
and renders (`GET /api/v1/views/tenants` gives the very rows `fleet get` prints on the store), so a command
answers in the interpreter's start plus the CLI's and one round trip.

Errors keep the CLI's contract: input the user must fix (the server's 422, naming the field) is a
`BadInput` (exit 2); everything else the server or the network says is a `RemoteError` (exit 1), one line
that says what to do next."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from reconciler.documents import BadInput

TIMEOUT_SECONDS = 30.0
PAGE = 1000  # rows a view page holds (the API's most)


class RemoteError(Exception):
    """The API refused or could not be reached; the CLI prints it on one line and exits 1."""


@dataclass(frozen=True)
class Remote:
    server: str  # http://HOST:PORT (the API of `fleet up` or `fleet api`)
    token: str | None

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
             *, missing_ok: bool = False) -> Any:
        """The JSON the API answered; None for a 404 when `missing_ok`."""
        import http.client

        parts = urlsplit(self.server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"--server: {self.server!r} must be http://HOST:PORT or https://HOST:PORT")
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.hostname, parts.port, timeout=TIMEOUT_SECONDS)
        target = parts.path.rstrip("/") + path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body, default=str).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except OSError as error:
            raise RemoteError(
                f"cannot reach the Fleet API at {self.server} ({error}); is `fleet up` or `fleet api` running "
                "there? Check --server or FLEET_SERVER"
            ) from error
        finally:
            connection.close()
        if response.status == 404 and missing_ok:
            return None
        try:
            answer = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            answer = None
        if response.status < 300:
            return answer
        raise self._refused(response.status, answer)

    def _refused(self, status: int, answer: Any) -> Exception:
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if status == 422:
            return BadInput(message or "the API refused the input (422)")
        said = message or f"HTTP {status}"
        if status == 401:
            return RemoteError(f"the API at {self.server} refused the token: {said}; give a token with FLEET_TOKEN "
                               "or --token-file (make one with `fleet token create NAME --role operator`)")
        if status == 403:
            return RemoteError(f"the API at {self.server} does not let this token do that: {said}")
        return RemoteError(said if status in (404, 409) else f"the API at {self.server} answered {status}: {said}")


@dataclass(frozen=True)
class View:
    """What the server rendered: the table's columns and rows, or the tenants as documents."""

    columns: list[str]
    rows: list[list[str | None]]
    items: list[Any]


def read_view(remote: Remote, name: str | None, output: str, selector: str | None,
              field_selector: str | None) -> View:
    """Every page of the tenants view (`GET /api/v1/views/tenants`)."""
    documents = output in ("json", "yaml")
    view = View([], [], [])
    after = ""
    while True:
        page = remote.call("GET", "/api/v1/views/tenants", {
            "name": name, "selector": selector, "field_selector": field_selector, "wide": output == "wide",
            "documents": documents, "limit": PAGE, "after": after or None,
        })
        view = View(page["columns"], view.rows + page["rows"], view.items + page["items"])
        after = page.get("next_after") or ""
        if not after:
            return view


def print_tenants(remote: Remote, name: str | None, output: str, selector: str | None,
                  field_selector: str | None) -> list[str]:
    """The lines `fleet get tenants` prints, as the server renders them."""
    from reconciler.cli.render import as_json, as_yaml, table

    view = read_view(remote, name, output, selector, field_selector)
    if name is not None and not (view.rows or view.items):
        raise RemoteError(f"tenant {name} not found; list them with fleet get tenants")
    if output in ("json", "yaml"):
        shown: Any = view.items[0] if name is not None else {"items": view.items}
        return [as_json(shown) if output == "json" else as_yaml(shown)]
    return [table(view.columns, view.rows)]


def watch_tenants(remote: Remote, output: str, selector: str | None, field_selector: str | None,
                  echo: Callable[[str], None], refresh_seconds: float = 0.5) -> None:
    """`fleet get tenants --watch` over the API: the table, then each row whose cells (but its age) change,
    and `NAME   (deleted)` for a tenant gone, until Ctrl-C; as on the store, a tenant that no longer
    matches the field selector is left out silently."""
    from reconciler.cli.render import table

    if output not in ("table", "wide"):
        raise BadInput("--watch: over --server, with -o table or wide (the API's watch stream, GET "
                       "/api/v1/watch, gives documents)")
    view = read_view(remote, None, output, selector, field_selector)
    echo(table(view.columns, view.rows))

    def key(row: list[str | None]) -> tuple[str | None, ...]:
        age = view.columns.index("AGE")
        return (*row[:age], *row[age + 1:])

    seen = {row[0]: key(row) for row in view.rows}
    try:
        while True:
            time.sleep(refresh_seconds)  # a display refresh, not a synchronisation
            view = read_view(remote, None, output, selector, field_selector)
            current = {row[0]: row for row in view.rows}
            for gone in sorted(name for name in set(seen) - set(current) if name is not None):
                seen.pop(gone)
                if field_selector and read_view(remote, gone, output, selector, None).rows:
                    continue  # still there, it no longer matches
                echo(f"{gone}   (deleted)")
            changed = [row for name, row in current.items() if seen.get(name) != key(row)]
            if changed:
                echo("\n".join(table(view.columns, changed).splitlines()[1:]))
                seen.update({row[0]: key(row) for row in changed})
    except KeyboardInterrupt:
        return


def apply(remote: Remote, documents: list[Any], dry_run: bool) -> list[str]:
    from reconciler.applying import Applied

    answer = remote.call("POST", "/api/v1/apply", {"dry_run": dry_run or None}, {"items": documents})
    lines = []
    for result in answer["results"]:
        applied = Applied(result["name"], result["outcome"], result["generation"], result["dry_run"],
                          list(result.get("plan") or []), result.get("node"), result.get("unschedulable"))
        lines += applied.lines()
    return lines


def _tenant_path(name: str) -> str:
    return f"/api/v1/tenants/{quote(name, safe='')}"


def delete(remote: Remote, name: str, wait: bool, timeout: float, echo: Any) -> None:
    if remote.call("DELETE", _tenant_path(name), missing_ok=True) is None:
        raise RemoteError(f"tenant {name} not found; list them with fleet get tenants")
    echo(f"tenant/{name} deletion requested")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while remote.call("GET", _tenant_path(name), missing_ok=True) is not None:
        if time.monotonic() > deadline:
            raise RemoteError(f"tenant {name} is still being deleted after {timeout:.0f}s; "
                              f"see fleet describe tenant {name}")
        time.sleep(0.1)  # polling a condition with a deadline
    events = remote.call("GET", _tenant_path(name) + "/events", {"limit": 1000}, missing_ok=True) or []
    receipt = next((e for e in reversed(events) if e.get("reason") == "Deleted"), None)
    removed = ", ".join((receipt.get("details") or {}).get("removed", [])) if receipt else ""
    echo(f"tenant/{name} deleted" + (f"; removed: {removed}" if removed else ""))


def set_paused(remote: Remote, name: str, paused: bool) -> str:
    answer = remote.call("PATCH", _tenant_path(name), body={"spec": {"paused": paused}}, missing_ok=True)
    if answer is None:
        raise RemoteError(f"tenant {name} not found; list them with fleet get tenants")
    return f"tenant/{name} {'paused' if paused else 'resumed'}, generation {answer['generation']}"


def set_asleep(remote: Remote, name: str, asleep: bool, wait: bool) -> str:
    verb = "sleep" if asleep else "wake"
    answer = remote.call("POST", _tenant_path(name) + f"/{verb}", {"wait": "true"} if wait else None, missing_ok=True)
    if answer is None:
        raise RemoteError(f"tenant {name} not found; list them with fleet get tenants")
    state = "asleep" if asleep else "awake"
    if not answer["changed"] and not wait:
        return f"tenant/{name} was already {state}"
    return f"tenant/{name} {state}: {answer['phase']}" if wait else \
        f"tenant/{name} marked {state}; its reconciler {'stops' if asleep else 'starts'} the container"
