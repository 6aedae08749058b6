"""The LXD REST API over its unix socket, with LXD's errors mapped to `specs` errors here and nowhere else.

Why one module: every request the LXD driver makes goes through `LxdClient`, so "the daemon is down",
"LXD refused this", "not there" and "an operation failed" each become one `specs` error in one place
(`TransientError`, `PermanentError`, `NotFound`), as the driver protocol requires. Asynchronous requests
return an operation; `LxdClient` waits on it (`GET /1.0/operations/<id>/wait`) so every call the driver
makes is finished when it returns. Incus speaks the same API under another socket path.

What it must never do: build a request from a spec value without the caller having checked it (names are
DNS labels, numbers are ints), or speak anything but JSON over the socket it was given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from loguru import logger

from specs import NotFound, PermanentError, TransientError

LXD_SOCKET = Path("/var/lib/lxd/unix.socket")
INCUS_SOCKET = Path("/var/lib/incus/unix.socket")
DEFAULT_SOCKETS = (LXD_SOCKET, INCUS_SOCKET)
OPERATION_TIMEOUT_S = 120
_REQUEST_TIMEOUT_S = 30.0


def default_socket() -> Path:
    """LXD's socket where it exists, else Incus's, else LXD's (so the error names the usual path)."""
    for path in DEFAULT_SOCKETS:
        if path.exists():
            return path
    return LXD_SOCKET


def start_hint(socket: Path) -> str:
    """How to start the daemon behind `socket`, for one-line errors."""
    if socket == INCUS_SOCKET:
        return "start it with `incusd --group incus-admin &`"
    return "start it with `lxd --group lxd --logfile=/var/log/lxd/lxd.log &` (then Fleet initialises what it needs)"


@dataclass(frozen=True)
class Reply:
    """A finished request: LXD's `metadata` (whatever that endpoint returns) and the ETag, if any."""

    metadata: Any
    etag: str | None = None


@dataclass(frozen=True)
class Instance:
    """An instance as LXD shows it (`GET /1.0/instances/<name>?recursion=1`)."""

    name: str
    status: str
    config: Mapping[str, str]
    devices: Mapping[str, Mapping[str, str]]
    pid: int | None = None
    addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # interface -> IPv4 addresses
    host_interfaces: Mapping[str, str] = field(default_factory=dict)  # interface -> host-side veth
    snapshots: tuple[str, ...] = ()
    description: str = ""
    # usage counters from the instance's state (zero when stopped or not asked for)
    cpu_ns: int = 0
    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    disk_bytes: int = 0
    network_in_bytes: int = 0  # received by the instance on eth0
    network_out_bytes: int = 0

    @property
    def running(self) -> bool:
        return self.status == "Running"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Instance:
        state = data.get("state") or {}
        network = state.get("network") or {}
        pid = state.get("pid") or None
        memory = state.get("memory") or {}
        counters = (network.get("eth0") or {}).get("counters") or {}
        return cls(
            name=str(data["name"]),
            status=str(data.get("status", "")),
            config={str(k): str(v) for k, v in (data.get("config") or {}).items()},
            devices={str(k): {str(a): str(b) for a, b in v.items()} for k, v in (data.get("devices") or {}).items()},
            pid=int(pid) if pid and pid > 0 else None,
            addresses={
                str(name): tuple(
                    str(a["address"]) for a in (info.get("addresses") or []) if a.get("family") == "inet"
                )
                for name, info in network.items()
            },
            host_interfaces={str(name): str(info.get("host_name") or "") for name, info in network.items()},
            snapshots=tuple(str(s["name"]) for s in (data.get("snapshots") or [])),
            description=str(data.get("description") or ""),
            cpu_ns=int((state.get("cpu") or {}).get("usage") or 0),
            memory_bytes=int(memory.get("usage") or 0),
            memory_peak_bytes=int(memory.get("usage_peak") or 0),
            disk_bytes=int(((state.get("disk") or {}).get("root") or {}).get("usage") or 0),
            network_in_bytes=int(counters.get("bytes_received") or 0),
            network_out_bytes=int(counters.get("bytes_sent") or 0),
        )


class LxdClient:
    """One connection pool to one daemon; safe to share between the agent's worker threads."""

    def __init__(self, socket: Path | None = None, *, timeout: float = _REQUEST_TIMEOUT_S) -> None:
        self.socket = Path(socket) if socket is not None else default_socket()
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://lxd", timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    # -- the edge: every request passes here ---------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> Reply:
        """Send one request; wait on its operation when it is asynchronous; raise `specs` errors only."""
        try:
            response = self._http.request(
                method, path, json=json, params=params, content=content, headers=dict(headers or {})
            )
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as error:
            raise TransientError(
                f"the LXD daemon does not answer on {self.socket} ({error}); {start_hint(self.socket)}",
                reason="LxdUnavailable",
            ) from error
        except httpx.HTTPError as error:
            raise TransientError(f"LXD {method} {path} failed: {error}", reason="LxdUnavailable") from error
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400 or body.get("type") == "error":
            raise _error(response.status_code, str(body.get("error") or response.text), f"{method} {path}")
        if body.get("type") == "async" and wait:
            return Reply(self.wait(str(body["operation"])), response.headers.get("etag"))
        return Reply(body.get("metadata"), response.headers.get("etag"))

    def wait(self, operation: str) -> Any:
        """Wait for an operation to finish; its metadata on success, a `specs` error on failure."""
        deadline = time.monotonic() + OPERATION_TIMEOUT_S
        while True:
            remaining = max(1, int(deadline - time.monotonic()))
            try:
                response = self._http.get(f"{operation}/wait", params={"timeout": remaining},
                                          timeout=remaining + _REQUEST_TIMEOUT_S)
            except httpx.HTTPError as error:
                raise TransientError(f"lost LXD operation {operation}: {error}", reason="LxdUnavailable") from error
            body = response.json()
            if response.status_code >= 400:
                raise _error(response.status_code, str(body.get("error")), f"operation {operation}")
            operation_data = body.get("metadata") or {}
            status = operation_data.get("status")
            if status == "Success":
                return operation_data.get("metadata")
            if status in ("Failure", "Cancelled"):
                # The request was valid (LXD accepted it) and failed while running: most often "instance is
                # busy running another operation" (an operation a killed operator started), which LXD
                # reports with the same code as any other failure. The next pass may succeed: transient.
                raise TransientError(f"LXD {operation_data.get('description')} failed: "
                                     f"{operation_data.get('err') or status}", reason="LxdOperationFailed")
            if time.monotonic() > deadline:
                raise TransientError(f"LXD operation {operation} still {status} after {OPERATION_TIMEOUT_S}s")

    # -- conveniences ------------------------------------------------------------------------------------
    def get(self, path: str, **params: str | int) -> Reply:
        return self.request("GET", path, params=params or None)

    def exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
        except NotFound:
            return False
        return True

    def server(self) -> Mapping[str, Any]:
        metadata: Mapping[str, Any] = self.get("/1.0").metadata
        return metadata

    def instance(self, name: str, *, state: bool = True) -> Instance | None:
        """One instance; with its state (pid, addresses, usage: LXD reads them from the kernel, a few ms)
        and snapshots only when asked."""
        try:
            reply = self.get(f"/1.0/instances/{name}", recursion=1) if state else self.get(f"/1.0/instances/{name}")
        except NotFound:
            return None
        return Instance.from_api(reply.metadata)

    def instances(self, *, state: bool = True, having: Mapping[str, str] | None = None) -> list[Instance]:
        """Every instance in one request; only those whose config has the keys and values of `having` when
        given (LXD filters on its side, so the state of instances left out is never read). With `state`,
        LXD reads each instance's state from the kernel (tens of ms per running instance: network through
        a helper process, disk usage from btrfs), so ask for it only where the counters are needed."""
        params: dict[str, str | int] = {"recursion": 2 if state else 1}
        if having:
            params["filter"] = " and ".join(f"config.{key} eq {value}" for key, value in having.items())
        return [Instance.from_api(item) for item in self.get("/1.0/instances", **params).metadata or []]


def _error(status: int, message: str, doing: str) -> Exception:
    """LXD's answer to a request as a `specs` error: 404 is NotFound; 400 and 403 refuse the request itself
    (asking again gets the same answer until the request changes); anything else may pass: 409 (made
    meanwhile), 412 (changed since read: ETag), 500s (busy, storage, races)."""
    text = f"LXD refused {doing}: {message}"
    logger.bind(status=status, doing=doing, error=message).debug("LXD answered with an error")
    if status == 404:
        return NotFound(text)
    if status in (400, 403):
        return PermanentError(text, reason="LxdRefused")
    return TransientError(text, reason="LxdError")
