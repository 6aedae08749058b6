"""A slow-upload flood, in a process of its own: N visitors of one tenant each start a large upload and send
one byte per interval (each at its own moment, as independent visitors would). A visitor that is answered
(408, 503) or cut off starts over after one interval.

Run: python -m tests.bench.slow_uploads HOST PORT TENANT_HOST CLAIM [--flooders 1100] [--interval 1]
Prints `ready` once every visitor has sent its request head; runs until its stdin closes (or it is killed).
It runs at a lower CPU priority (nice 10): the attackers' own CPU is theirs, on other machines, not a cost
of the gateway under test.
"""

import argparse
import asyncio
import contextlib
import os
import random
import sys


class _Upload(asyncio.Protocol):
    def __init__(self, flood: "_Flood", index: int) -> None:
        self.flood = flood
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.tick: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.flood.head)
        self.flood.sent_head(self.index)
        self._schedule()

    def _schedule(self) -> None:
        self.tick = self.flood.loop.call_later(self.flood.interval * self.flood.jitter[self.index].uniform(0.9, 1.1),
                                               self._send_byte)

    def _send_byte(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"x")
            self._schedule()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.close()  # answered (408, 503): this upload is over

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tick is not None:
            self.tick.cancel()
        self.flood.loop.call_later(self.flood.interval, self.flood.connect, self.index)


class _Flood:
    def __init__(self, arguments: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.host, self.port, self.interval = arguments.host, arguments.port, arguments.interval
        self.head = (f"POST /upload HTTP/1.1\r\nHost: {arguments.tenant_host}\r\n"
                     f"Cookie: fleet_claim={arguments.claim}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {1 << 30}\r\n\r\n").encode()
        self.jitter = [random.Random(index) for index in range(arguments.flooders)]
        self.waiting = set(range(arguments.flooders))
        self.ready = asyncio.Event()

    def sent_head(self, index: int) -> None:
        self.waiting.discard(index)
        if not self.waiting:
            self.ready.set()

    def connect(self, index: int) -> None:
        async def dial() -> None:
            try:
                await self.loop.create_connection(lambda: _Upload(self, index), self.host, self.port)
            except OSError:
                self.loop.call_later(self.interval, self.connect, index)

        self.loop.create_task(dial())


async def _run(arguments: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    flood = _Flood(arguments, loop)
    for index in range(arguments.flooders):
        loop.call_later(flood.jitter[index].uniform(0, arguments.interval), flood.connect, index)
    await flood.ready.wait()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("tenant_host")
    parser.add_argument("claim")
    parser.add_argument("--flooders", type=int, default=1100)
    parser.add_argument("--interval", type=float, default=1.0)
    with contextlib.suppress(OSError):
        os.nice(10)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
