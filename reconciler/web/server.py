"""Running an ASGI app on a uvicorn server in a background thread, so `fleet up` can serve the API and
the gateway next to the controller in one process. Never installs signal handlers: the CLI owns them."""

import threading
from dataclasses import dataclass
from typing import Any

import uvicorn
from loguru import logger

from specs import PermanentError


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @staticmethod
    def parse(text: str, option: str) -> "Listen":
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{option}: {text!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
        return Listen(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class BackgroundServer:
    def __init__(self, app: Any, listen: Listen, *, name: str) -> None:
        self.name = name
        # uvloop and httptools (dependencies): about twice the requests per core of asyncio and h11.
        config = uvicorn.Config(app, host=listen.host, port=listen.port, log_level="warning", access_log=False,
                                lifespan="auto", timeout_graceful_shutdown=2, ws="websockets-sansio",
                                loop="uvloop", http="httptools")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.listen = listen

    def start(self, timeout: float = 10.0) -> "BackgroundServer":
        self._thread.start()
        stopped = threading.Event()
        while not self.server.started and self._thread.is_alive():
            stopped.wait(0.01)
        if not self.server.started:
            raise PermanentError(f"the {self.name} could not listen on {self.listen} (in use?)")
        sockets = [s for server in self.server.servers for s in server.sockets]
        if sockets:
            self.listen = Listen(self.listen.host, sockets[0].getsockname()[1])
        logger.bind(listen=str(self.listen)).info("Started the {}", self.name)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
