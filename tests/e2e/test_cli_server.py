"""`fleet --server URL`: the tenant verbs over the HTTP API, as an operator's laptop runs them (a token, no
store): the same tables and documents as on the store, the same errors and exit codes, and none of the
store's or the models' imports."""

import json
import signal
import subprocess
import sys
import threading

from tests.e2e.conftest import FLEET, HEAVY, Laptop, tenants
from tests.helpers import wait_for


def without_age(table: str) -> list[list[str]]:
    """The table's cells but AGE's, which moves on between two commands."""
    lines = [line.split() for line in table.splitlines()]
    at = lines[0].index("AGE")
    return [cells[:at] + cells[at + 1:] for cells in lines]


def test_over_the_api_apply_get_pause_and_delete_do_what_they_do_on_the_store(laptop: Laptop) -> None:
    applied = laptop.run("apply", "-f", "-", stdin=tenants("acme", "globex", "initech"))
    assert applied.stdout.splitlines() == [f"tenant/{n} created, generation 1" for n in ("acme", "globex", "initech")]
    for name in ("acme", "globex", "initech"):
        wait_for(lambda n=name: laptop.phase(n) == "Running", what=f"{name} Running")  # type: ignore[misc]

    # The same rows and documents as `fleet get` prints on the store itself.
    on_store = laptop.fleet.run("get", "tenants", "-o", "wide").stdout
    assert without_age(laptop.run("get", "tenants", "-o", "wide").stdout) == without_age(on_store)
    assert laptop.run("get", "tenants", "-o", "json").stdout == laptop.fleet.run("get", "tenants", "-o", "json").stdout
    assert laptop.run("get", "tenant", "acme", "-o", "yaml").stdout == \
        laptop.fleet.run("get", "tenant", "acme", "-o", "yaml").stdout
    gold = laptop.run("get", "tenants", "-l", "tier=gold").stdout.splitlines()
    assert [line.split()[0] for line in gold] == ["NAME", "acme"]
    laptop.run("--server", laptop.api, "pause", "globex")  # the flag before the command, the env beside it
    laptop.fleet.run("get", "tenant", "globex")  # still there
    assert json.loads(laptop.fleet.run("get", "tenant", "globex", "-o", "json").stdout)["spec"]["paused"] is True
    resumed = laptop.run("resume", "globex", "--server", laptop.api)  # ... and after it
    assert resumed.stdout.startswith("tenant/globex resumed, generation 3")

    dry = laptop.run("apply", "--dry-run", "-f", "-", stdin=tenants("hooli")).stdout.splitlines()
    assert dry[0] == "tenant/hooli created (dry run), generation 1"
    assert dry[1].startswith("  would land on: ") and any(line.startswith("  plan: ") for line in dry[2:])
    assert laptop.fleet.run("get", "tenant", "hooli", check=False).returncode == 1  # nothing written

    changed = laptop.run("apply", "-f", "-", stdin=tenants("acme", cpu="500m")).stdout
    assert changed.strip() == "tenant/acme configured, generation 2"
    deleted = laptop.run("delete", "tenant", "initech", "--wait", "--timeout", "30").stdout.splitlines()
    assert deleted[0] == "tenant/initech deletion requested" and deleted[-1].startswith("tenant/initech deleted")
    assert laptop.fleet.run("get", "tenant", "initech", check=False).returncode == 1


def test_over_the_api_bad_input_is_one_line_exit_2_and_nothing_is_written(laptop: Laptop) -> None:
    cases = [
        (("apply", "-f", "-"), tenants("ok-one") + "---\n" + tenants("bad", cpu="lots"), "spec.resources.cpu"),
        (("get", "tenants", "--field-selector", "colour=red"), None, "field_selector"),
        (("get", "tenants", "-l", "no equals"), None, "selector"),
        (("get", "tenant", "Bad_Name"), None, "name"),
        (("--db", "sqlite:////nowhere.db", "get", "tenants", "--server", "http://127.0.0.1:1"), None, "--server"),
        (("describe", "tenant", "acme", "--server", "http://127.0.0.1:1"), None, "--db"),
    ]
    for args, stdin, named in cases:
        result = laptop.run(*args, stdin=stdin, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr, (args, result.stderr)
    assert laptop.fleet.run("get", "tenant", "ok-one", check=False).returncode == 1  # all or none


def test_over_the_api_a_refused_token_a_missing_tenant_and_no_server_are_one_line_exit_1(laptop: Laptop) -> None:
    wrong = laptop.run("get", "tenants", env={**laptop.env, "FLEET_TOKEN": "fleet_nope"}, check=False)
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    missing = laptop.run("get", "tenant", "ghost", check=False)
    assert missing.returncode == 1 and "tenant ghost not found" in missing.stderr
    assert laptop.run("delete", "tenant", "ghost", check=False).returncode == 1
    down = laptop.run("get", "tenants", env={**laptop.env, "FLEET_SERVER": "http://127.0.0.1:9"}, check=False)
    assert down.returncode == 1 and "cannot reach the Fleet API at http://127.0.0.1:9" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1


def test_over_the_api_the_cli_loads_neither_the_models_nor_the_store(laptop: Laptop) -> None:
    """What makes `fleet --server` answer at once (tests/bench/bench_cli.py measures it)."""
    laptop.run("apply", "-f", "-", stdin=tenants("acme"))
    probe = ("import sys\nfrom reconciler.cli.main import main\nsys.argv = ['fleet', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")
    for args in (("get", "tenants"), ("get", "tenant", "acme", "-o", "json")):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                                env=laptop.env, timeout=60)
        assert "acme" in result.stdout, result.stderr
        assert "LOADED []" in result.stderr, result.stderr


def test_over_the_api_get_watch_prints_new_changed_and_deleted_tenants_until_ctrl_c(laptop: Laptop) -> None:
    laptop.run("apply", "-f", "-", stdin=tenants("acme", "globex"))
    watcher = subprocess.Popen([FLEET, "get", "tenants", "--watch"], env=laptop.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    stdout, lines = watcher.stdout, []
    threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True).start()
    try:
        wait_for(lambda: any(line.startswith("NAME") for line in lines), what="the table's header")
        laptop.run("apply", "-f", "-", stdin=tenants("initech"))
        wait_for(lambda: any(line.split()[:2] == ["initech", "Running"] for line in lines if line.strip()),
                 what="the new tenant's row, Running")
        laptop.run("delete", "tenant", "globex", "--wait")
        wait_for(lambda: "globex   (deleted)\n" in lines, what="the deleted tenant's line")
        assert sum(1 for line in lines if line.startswith("NAME")) == 1, "one header, then only changed rows"
    finally:
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0, watcher.stderr.read() if watcher.stderr else ""


def test_sleep_and_wake_on_the_store_and_over_the_api(laptop: Laptop) -> None:
    store = laptop.fleet
    store.run("apply", "-f", "-", stdin="kind: Tenant\nmetadata: {name: dozy}\nspec: {template: base, "
                                        "sleep: {after: 15m}}\n")
    wait_for(lambda: laptop.phase("dozy") == "Running", what="dozy Running")
    shown = store.run("get", "tenant", "dozy", "-o", "yaml").stdout
    assert "after: 15m" in shown, shown
    slept = store.run("sleep", "dozy", "--wait")
    assert slept.stdout.strip() == "tenant/dozy asleep: Sleeping"
    assert store.run("sleep", "dozy").stdout.strip() == "tenant/dozy was already asleep"
    nodes = json.loads(store.run("get", "tenant", "dozy", "-o", "json").stdout)
    assert nodes["status"]["phase"] == "Sleeping"
    woken = laptop.run("wake", "dozy", "--wait")  # over the API
    assert woken.stdout.strip() == "tenant/dozy awake: Running"
    assert laptop.run("wake", "dozy").stdout.strip() == "tenant/dozy was already awake"
    assert laptop.run("sleep", "dozy", "--wait").stdout.strip() == "tenant/dozy asleep: Sleeping"
    events = store.run("events", "dozy", "-n", "50").stdout
    assert "SleepRequested" in events and "put to sleep by token ops" in events, events
    assert "woken by token ops" in events
    missing = laptop.run("wake", "nobody", check=False)
    assert missing.returncode == 1 and "tenant nobody not found" in missing.stderr
    bad = store.run("apply", "-f", "-", stdin="kind: Tenant\nmetadata: {name: dozy}\nspec: {template: base, "
                                             "sleep: {after: 0s}}\n", check=False)
    assert bad.returncode == 2 and "spec.sleep.after" in bad.stderr and "1s to 30d" in bad.stderr, bad.stderr
