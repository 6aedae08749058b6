"""Tenant address leases for the nspawn driver: each tenant gets a /30 of the node's range.

The host end of the tenant's veth takes the first address, the tenant the second (with a default route
through the host end). Leases live in one JSON file written atomically under an exclusive flock; allocation
also skips any /30 a Fleet veth on the host still carries, so a lost or stale file never hands out an
address twice. Addresses in use are read by `namespace_ipv4_addresses`: one raw netlink dump parsed
for the two attributes needed (pyroute2 decoded every attribute of every address: ~20 ms at 50 tenants,
growing with them, on every signup).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from specs import PermanentError, TransientError

T = TypeVar("T")

_RTM_GETADDR, _NLM_F_REQUEST, _NLM_F_DUMP, _NLMSG_ERROR, _NLMSG_DONE = 22, 1, 0x300, 2, 3
_IFA_ADDRESS, _IFA_LABEL = 1, 3
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index


def namespace_ipv4_addresses() -> list[tuple[str, str]]:
    """(address, interface label) of every IPv4 address in the calling thread's network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        request = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        sock.send(_HEADER.pack(_HEADER.size + len(request), _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + request)
        found: list[tuple[str, str]] = []
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise OSError("netlink address dump ended early")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind = _HEADER.unpack_from(data, offset)[:2]
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    raise OSError(code, f"netlink address dump failed: {os.strerror(code)}")
                found.append(_address_and_label(data, offset + _HEADER.size + _IFADDRMSG.size, offset + length))
                offset += (length + 3) & ~3


def _address_and_label(data: bytes, start: int, end: int) -> tuple[str, str]:
    address = label = ""
    while start + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, start)
        if size < 4:
            break
        value = data[start + 4 : start + size]
        if kind == _IFA_ADDRESS and len(value) == 4:
            address = socket.inet_ntoa(value)
        elif kind == _IFA_LABEL:
            label = value.split(b"\0", 1)[0].decode(errors="replace")
        start += (size + 3) & ~3
    return address, label


@dataclass(frozen=True)
class Lease:
    index: int
    network: ipaddress.IPv4Network

    @property
    def host_address(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def tenant_address(self) -> str:
        return str(self.network.network_address + 2)


class Leases:
    """Tenant -> /30 index, persisted in one JSON file written atomically under an exclusive flock.

    The file is the record; allocation also skips any /30 a Fleet veth on the host still carries, so a
    lost or stale file can never hand out an address twice.
    """

    def __init__(self, path: Path, address_range: str) -> None:
        self.path = path
        self.range = ipaddress.IPv4Network(address_range)
        if self.range.prefixlen > 30:
            raise PermanentError(f"address range {address_range} is smaller than one /30", reason="BadRange")
        self.subnets = 1 << (30 - self.range.prefixlen)
        self._lock = threading.Lock()

    def _subnet(self, index: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.range.network_address) + 4 * index, 30))

    def index_of(self, address: str) -> int | None:
        ip = ipaddress.IPv4Address(address)
        if ip not in self.range:
            return None
        return (int(ip) - int(self.range.network_address)) // 4

    @contextlib.contextmanager
    def _locked(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_suffix(".lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise TransientError(f"lease file {self.path} is unreadable: {error}") from error
        return {str(name): int(index) for name, index in data.get("leases", {}).items()}

    def _save(self, leases: dict[str, int]) -> None:
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            json.dump({"range": str(self.range), "leases": dict(sorted(leases.items()))}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def get(self, tenant: str) -> Lease | None:
        with self._locked():
            index = self._load().get(tenant)
        return None if index is None else Lease(index, self._subnet(index))

    def all(self) -> dict[str, Lease]:
        with self._locked():
            return {name: Lease(index, self._subnet(index)) for name, index in self._load().items()}

    def acquire(self, tenant: str, in_use_on_host: dict[int, str], interface: str) -> Lease:
        """The tenant's lease, or the lowest /30 neither leased nor on a host interface of another tenant.

        `in_use_on_host` maps /30 indexes to the Fleet veth carrying them; `interface` is the tenant's."""
        with self._locked():
            leases = self._load()
            if tenant in leases:
                return Lease(leases[tenant], self._subnet(leases[tenant]))
            # A veth still carrying an address of this tenant (lease file lost): take that one back.
            for index, owner in in_use_on_host.items():
                if owner == interface and index not in leases.values():
                    leases[tenant] = index
                    self._save(leases)
                    return Lease(index, self._subnet(index))
            taken = set(leases.values()) | set(in_use_on_host)
            for index in range(self.subnets):
                if index not in taken:
                    leases[tenant] = index
                    self._save(leases)
                    return Lease(index, self._subnet(index))
        raise PermanentError(f"address range {self.range} has no free /30 left", reason="AddressesExhausted")

    def when_empty(self, action: Callable[[], T]) -> T | None:
        """`action()` under the lock if no tenant holds a lease (none can be taken meanwhile), else None."""
        with self._locked():
            return action() if not self._load() else None

    def release(self, tenant: str) -> Lease | None:
        with self._locked():
            leases = self._load()
            index = leases.pop(tenant, None)
            if index is not None:
                self._save(leases)
        return None if index is None else Lease(index, self._subnet(index))
