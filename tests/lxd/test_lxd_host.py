"""Bad LXD set-ups get one line that names the problem and the fix: from `host_problems` (registered in
drivers/registry.py) and from the CLI a user runs. A small HTTP server on a unix socket stands in for a
daemon that answers but lacks what Fleet needs; the other cases are real (no socket, nobody listening)."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from drivers import host_problems

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="host_problems answers 'not root' first for non-root")
FLEET = Path(sys.executable).with_name("fleet")


def test_a_missing_socket_says_the_daemon_is_not_running_and_how_to_start_it(tmp_path: Path) -> None:
    problems = host_problems("lxd", socket=tmp_path / "unix.socket")
    assert len(problems) == 1
    assert "socket" in problems[0] and "lxd --group lxd" in problems[0], problems


def test_a_socket_nobody_listens_on_says_the_daemon_does_not_answer(tmp_path: Path) -> None:
    path = tmp_path / "unix.socket"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening, then closed: what a killed daemon leaves
    stale.close()
    problems = host_problems("lxd", socket=path)
    assert len(problems) == 1 and "does not answer" in problems[0] and "lxd --group lxd" in problems[0], problems


class _Unix(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def daemon_without_btrfs(tmp_path: Path) -> Iterator[Path]:
    """Answers like LXD 5.0 with no btrfs storage driver and no storage pools."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/1.0":
                status, body = 200, {"type": "sync", "metadata": {"environment": {
                    "server_version": "5.0.2", "storage_supported_drivers": [{"Name": "dir"}]}}}
            else:
                status, body = 404, {"type": "error", "error": "Storage pool not found", "error_code": 404}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

        def address_string(self) -> str:
            return "unix"

    path = tmp_path / "lxd.socket"
    server = _Unix(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_an_absent_pool_that_lxd_cannot_make_names_the_pool_and_the_fix(daemon_without_btrfs: Path) -> None:
    problems = [p for p in host_problems("lxd", socket=daemon_without_btrfs) if "dnsmasq" not in p]
    assert len(problems) == 1
    assert "storage pool 'fleet' is absent" in problems[0] and "btrfs-progs" in problems[0], problems


def test_fleet_up_without_a_daemon_prints_one_line_with_the_fix(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(FLEET), "--data-dir", str(tmp_path), "up", "--driver", "lxd", "--lxd-socket", str(tmp_path / "none"),
         "--no-api"], capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # after the store's log
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "lxd" in lines[0] and "not running" in lines[0] and "lxd --group lxd" in lines[0], lines


def test_fleet_doctor_names_the_missing_daemon_and_its_fix(tmp_path: Path) -> None:
    from drivers import host_checks

    checks = host_checks("lxd", socket=tmp_path / "unix.socket")
    assert len(checks) == 1 and checks[0].status == "failed" and "lxd --group lxd" in checks[0].fix, checks
