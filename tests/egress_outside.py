"""The fake outside of the egress tests on the real host (nspawn's and LXD's), made and removed by the test.

A network namespace joined to the host by a veth the test makes (the uplink on the host: the driver's
outbound interface), holding a public-looking address on its end, plus another public one, a private one
and a link-local one on its loopback, each routed to it from the host by a /32 route the test adds. Its
servers (TCP 8080 and 8443, UDP 5353) say which address they were reached on and whom they saw. A listener
of the host's own (`HostListener`) shows what a tenant must never reach. Root only; everything made here is
removed after, and a killed run's leftovers before.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from drivers import netns


@dataclass(frozen=True)
class OutsideAddresses:
    """Names and addresses of one test module's outside (each module its own, so they never collide)."""

    namespace: str
    uplink: str  # on the host
    downlink: str  # in the namespace
    host_side: str  # the uplink's address, in a /24 with `outside`
    outside: str  # the downlink's address
    public_too: str  # on the namespace's loopback, routed to it: another public address,
    private: str  # a private one,
    link_local: str  # and a link-local one

    @property
    def on_loopback(self) -> tuple[str, str, str]:
        return self.public_too, self.private, self.link_local


@dataclass
class Outside:
    """The fake outside: who reached which of its servers, from where."""

    seen: list[tuple[str, str]] = field(default_factory=list)  # (local address:port, peer address)
    sockets: list[socket.socket] = field(default_factory=list)

    def serve(self) -> None:
        for listener in self.sockets:
            target = self._tcp if listener.type == socket.SOCK_STREAM else self._udp
            threading.Thread(target=target, args=(listener,), daemon=True).start()

    def _tcp(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, (peer, _) = listener.accept()
                with connection:
                    local, port = connection.getsockname()
                    self.seen.append((f"{local}:{port}", peer))
                    connection.sendall(f"outside {local}:{port} saw {peer}\n".encode())

    def _udp(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                _, sender = listener.recvfrom(64)
                if sender is None:  # shut down
                    return
                peer, port = sender
                self.seen.append(("udp", peer))
                listener.sendto(f"outside-udp-saw-{peer}".encode(), (peer, port))


@dataclass
class HostListener:
    """A TCP listener of the host's own on `addresses` (what a tenant could try to reach), answering "host"."""

    addresses: list[str]
    port: int
    sockets: list[socket.socket] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    def __enter__(self) -> HostListener:
        for address in self.addresses:
            listener = socket.create_server((address, self.port))
            self.sockets.append(listener)
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, (peer, _) = listener.accept()
                self.accepted.append(peer)
                connection.sendall(b"host\n")
                connection.close()

    def __exit__(self, *_: object) -> None:
        close_sockets(self.sockets)


def close_sockets(sockets: list[socket.socket]) -> None:
    """Shut down first: a close alone leaves a socket listening while a thread still waits in accept()."""
    for listener in sockets:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _listeners() -> list[socket.socket]:
    """Made inside the outside namespace (a socket stays in the namespace it was made in)."""
    made = [socket.create_server(("0.0.0.0", port)) for port in (8080, 8443)]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 5353))
    return [*made, udp]


def remove_outside(addresses: OutsideAddresses) -> None:
    for route in addresses.on_loopback:
        subprocess.run(["ip", "route", "del", f"{route}/32"], capture_output=True)
    subprocess.run(["ip", "link", "del", addresses.uplink], capture_output=True)
    if netns.is_bound(netns.NETNS_DIR / addresses.namespace):
        netns.remove(netns.NETNS_DIR / addresses.namespace)


@contextlib.contextmanager
def outside_world(addresses: OutsideAddresses, *, before_up: Callable[[], None] | None = None) -> Iterator[Outside]:
    """The outside, serving, until the block ends; `before_up` runs once the uplink exists, before it is up."""
    remove_outside(addresses)  # a killed run's
    path = netns.NETNS_DIR / addresses.namespace
    netns.create(path)
    world = Outside()
    try:
        _ip("link", "add", addresses.uplink, "type", "veth", "peer", "name", addresses.downlink,
            "netns", addresses.namespace)
        _ip("addr", "add", f"{addresses.host_side}/24", "dev", addresses.uplink)
        if before_up is not None:
            before_up()
        _ip("link", "set", addresses.uplink, "up")
        _ip("-n", addresses.namespace, "addr", "add", f"{addresses.outside}/24", "dev", addresses.downlink)
        _ip("-n", addresses.namespace, "link", "set", addresses.downlink, "up")
        _ip("-n", addresses.namespace, "link", "set", "lo", "up")
        for address in addresses.on_loopback:
            _ip("-n", addresses.namespace, "addr", "add", f"{address}/32", "dev", "lo")
            _ip("route", "add", f"{address}/32", "via", addresses.outside, "dev", addresses.uplink)
        world.sockets = netns.inside(path, _listeners)
        world.serve()
        yield world
    finally:
        close_sockets(world.sockets)
        remove_outside(addresses)
