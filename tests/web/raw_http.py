"""HTTP spoken on a socket of our own, for what a client library will not send: a head that declares a body
and no body, chunks as they are, header bytes outside ASCII."""

import socket
from collections.abc import Sequence


def _address(api: str) -> tuple[str, int]:
    host, _, port = api.removeprefix("http://").rpartition(":")
    return host, int(port)


def raw_request(api: str, head: str, chunks: Sequence[bytes] = ()) -> tuple[int, dict[str, str], bytes]:
    """Send a request head (and these body pieces, as they are) on a socket of our own; read the answer.
    No client library: nothing here waits to send a body the server did not ask for."""
    with socket.create_connection(_address(api), timeout=10) as connection:
        connection.sendall(head.encode("latin-1"))
        for chunk in chunks:
            connection.sendall(chunk)
        received = b""
        while b"\r\n\r\n" not in received:
            data = connection.recv(65536)
            assert data, f"the server closed the connection without an answer: {received!r}"
            received += data
        header_block, _, body = received.partition(b"\r\n\r\n")
        status_line, *lines = header_block.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            data = connection.recv(65536)
            assert data, "the server closed the connection in the middle of its answer"
            body += data
    return int(status_line.split()[1]), headers, body
