"""Long operations show progress (rich) on a terminal, and nothing extra when the output is not one:
`fleet node init` under a pseudo-terminal and through pipes."""

import os
import pty
import subprocess

from tests.e2e.conftest import FLEET, Fleet


def _on_a_terminal(fleet: Fleet, *args: str) -> tuple[int, str]:
    """Run `fleet ARGS` with stdout and stderr on a pseudo-terminal; its exit code and what it showed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([FLEET, *args], env={**fleet.env, "TERM": "xterm", "COLUMNS": "100"},
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal's other end is closed, the process is done
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=60), shown.decode(errors="replace")


def test_node_init_shows_its_steps_on_a_terminal_and_nothing_extra_in_a_pipe(fleet: Fleet) -> None:
    code, shown = _on_a_terminal(fleet, "node", "init", "--driver", "fake")
    assert code == 0, shown
    assert "opening the pool" in shown and "making template base@1" in shown, shown
    assert "ready: driver" in shown

    piped = fleet.run("node", "init", "--driver", "fake")
    assert "opening the pool" not in piped.stderr + piped.stdout, "no progress where no one watches"
    assert "\x1b" not in piped.stderr + piped.stdout, "no terminal control characters in a pipe"
    assert "ready: driver" in piped.stdout
