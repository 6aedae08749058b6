"""How fast the CLI answers: wall time of `fleet --help`, `fleet get tenants` (100 tenants in a real SQLite
store) and `fleet apply -f` of one new tenant, beside `python -c pass` (the interpreter's own start) in the
same run. Goal: under 0.3 s each and at most 0.2 s above `python -c pass`.

Each command runs as a user runs it: this venv's `fleet` script in a fresh process, with its bytecode cached
as after an install (a warm-up run first, into a cache directory of its own, so the working tree gets no
__pycache__). Runs take turns (pass, import state, help, get, apply, pass, ...), so a load that comes and
goes on the machine hits every command alike. `--before TREE` times the same commands, in the same turns,
with the project's code taken from TREE instead (e.g. `git archive HEAD | tar -x -C /tmp/before`), for a
before and after table.

Run: .venv/bin/python -m tests.bench.bench_cli [--runs 10] [--before TREE] [--no-write]"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.report import write_section

TITLE = "CLI start-up"
COMMAND = ".venv/bin/python -m tests.bench.bench_cli"
FLEET = str(Path(sys.executable).parent / "fleet")
GOAL_SECONDS = 0.3
GOAL_ABOVE_PYTHON = 0.2
PASS = "python -c pass"
STORE = "python -c 'import state' (the store's own import)"
REFERENCES = {PASS: [sys.executable, "-c", "pass"], STORE: [sys.executable, "-c", "import state"]}
HELP, GET, APPLY = "fleet --help", "fleet get tenants (100 tenants)", "fleet apply -f (one new tenant)"


def tenant(name: str) -> str:
    return f"kind: Tenant\nmetadata: {{name: {name}, labels: {{plan: pro}}}}\nspec: {{template: base}}\n"


def timed(argv: list[str], env: dict[str, str], stdin: str | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=120, cwd="/")
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited {result.returncode}: {result.stderr}")
    return took


@dataclass
class Setup:
    """One code base to time: its environment and its stores (one listed by `get`, one `apply` writes to,
    so `get` lists the same 100 tenants throughout)."""

    env: dict[str, str]
    listed: str
    applied: str
    times: dict[str, list[float]] = field(default_factory=lambda: {HELP: [], GET: [], APPLY: []})

    @classmethod
    def prepare(cls, directory: Path, tree: Path | None) -> "Setup":
        directory.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
        if tree is not None:
            env["PYTHONPATH"] = str(tree)  # found before the editable install of this tree
        setup = cls(env, f"sqlite:///{directory / 'fleet.db'}", f"sqlite:///{directory / 'applied.db'}")
        for url in (setup.listed, setup.applied):  # stores as `fleet up` leaves them, made by that tree's code
            subprocess.run([sys.executable, "-c", "import sys; from state import Store; Store(sys.argv[1]).close()",
                            url], check=True, capture_output=True, env=env, cwd="/")
        setup.run(APPLY, 0, "---\n".join(tenant(f"t{i:03d}") for i in range(100)), into=setup.listed)
        setup.run(HELP, 0)  # warm-up: bytecode compiled and cached, files in the page cache
        setup.run(GET, 0)
        return setup

    def run(self, name: str, turn: int, stdin: str | None = None, into: str | None = None) -> float:
        # --db before the command: a tree older than the change that took it after the command too
        argv = {HELP: [FLEET, "--help"], GET: [FLEET, "--db", self.listed, "get", "tenants"],
                APPLY: [FLEET, "--db", into or self.applied, "apply", "-f", "-"]}[name]
        if name == APPLY and stdin is None:
            stdin = tenant(f"new-{turn}")
        return timed(argv, self.env, stdin)

    def count(self) -> int:
        listed = subprocess.run([FLEET, "--db", self.listed, "get", "tenants"], capture_output=True, text=True,
                                env=self.env, check=True)
        return len(listed.stdout.splitlines()) - 1


def measure(runs: int, directory: Path, before: Path | None) -> tuple[dict[str, list[float]], Setup, Setup | None]:
    after = Setup.prepare(directory / "after", None)
    earlier = Setup.prepare(directory / "before", before) if before else None
    references: dict[str, list[float]] = {name: [] for name in REFERENCES}
    for argv in REFERENCES.values():
        timed(argv, after.env)
    for turn in range(runs):
        for name, argv in REFERENCES.items():
            references[name].append(timed(argv, after.env))
        for setup in (after, earlier):
            for name in (HELP, GET, APPLY):
                if setup is not None:
                    setup.times[name].append(setup.run(name, turn))
    return references, after, earlier


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report(references: dict[str, list[float]], after: Setup, before: Setup | None, before_name: str, runs: int,
           load: tuple[float, float]) -> str:
    floor = statistics.median(references[PASS])
    lines = [
        f"| command | median of {runs} | fastest | slowest | above `{PASS}` | goal |"
        + (f" before ({before_name}) |" if before else ""),
        "| --- | --- | --- | --- | --- | --- |" + (" --- |" if before else ""),
    ]
    for name, values in [*references.items(), *after.times.items()]:
        median = statistics.median(values)
        above = "" if name == PASS else f"{(median - floor) * 1000:+.0f} ms"
        if name in references:
            goal = "(the floor)" if name == PASS else "(for reference)"
        else:
            goal = "met" if median < GOAL_SECONDS and median - floor <= GOAL_ABOVE_PYTHON else "missed"
        row = f"| `{name}` | {_ms(median)} | {_ms(min(values))} | {_ms(max(values))} | {above} | {goal} |"
        if before is not None:
            row += f" {_ms(statistics.median(before.times[name]))} |" if name in before.times else " |"
        lines.append(row)
    store, get = statistics.median(references[STORE]), statistics.median(after.times[GET])
    cpus = os.cpu_count() or 1
    lines += [
        "",
        f"`fleet get tenants` listed {after.count()} tenants. Importing the store alone takes {_ms(store - floor)} "
        f"above the interpreter's start; `fleet get tenants` adds {_ms(get - store)} to that (the CLI, opening the "
        "store, the query, the table).",
        "",
        f"Load average: {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {cpus} CPUs."
        + (" The machine was shared and busy during the run: the numbers are noisy, and higher than on an idle "
           "machine." if max(load) > cpus / 2 else ""),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--before", type=Path, help="A source tree to time beside this one (e.g. the last commit).")
    parser.add_argument("--before-name", default="before", help="What to call it in the table.")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        references, after, before = measure(args.runs, Path(directory), args.before)
        body = report(references, after, before, args.before_name, args.runs, (load_before, os.getloadavg()[0]))
    print(body)
    if not args.no_write:
        command = COMMAND + (f" --before TREE --before-name '{args.before_name}'" if args.before else "")
        write_section(TITLE, command, body)


if __name__ == "__main__":
    main()
