"""The Driver contract, run against every driver: the fake (always), nspawn and LXD (where the host can).

A driver that passes here can stand in for another under the reconciler; the fake's semantics are the
reference, the real driver must not differ from them in anything the planner can observe.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from specs import NotFound, Observed, PermanentError, TemplateSource, TransientError
from tests.helpers import wait_for

pytest.register_assert_rewrite("tests.integration.conftest_runtime", "tests.drivers.subjects")  # before the import
from tests.drivers.subjects import (  # noqa: E402
    BASE,
    CRASH_STEPS,
    LARGE,
    PREFIX,
    SMALL,
    SUBJECTS,
    WEB,
    Subject,
)

pytest_plugins = ["tests.integration.conftest_runtime", "tests.lxd.runtime"]


@pytest.fixture(params=["fake", pytest.param("nspawn", marks=[pytest.mark.root]),
                        pytest.param("lxd", marks=[pytest.mark.root])])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    made = SUBJECTS[request.param](request)
    made.driver.ensure_template(BASE)
    try:
        yield made
    finally:
        for name in made.made:
            made.driver.delete(name)


def test_clone_is_idempotent(subject: Subject) -> None:
    name = PREFIX + "twice"
    subject.made.append(name)
    subject.driver.clone(name, BASE)
    subject.driver.clone(name, BASE)
    observed = subject.driver.inspect(name)
    assert observed is not None and observed.template == BASE.ref
    assert [o.name for o in subject.driver.list()].count(name) == 1


def test_inspect_after_provisioning_shows_resources_network_running_and_address(subject: Subject) -> None:
    name = subject.provision("full")
    observed = subject.driver.inspect(name)
    assert observed is not None
    assert observed.resources == SMALL
    assert observed.network == WEB
    assert observed.running and observed.pid is not None
    assert observed.address is not None
    assert observed.problems == ()


def test_apply_resources_changes_observed_values_in_place(subject: Subject) -> None:
    name = subject.provision("requota")
    before = subject.driver.inspect(name)
    subject.driver.apply_resources(name, LARGE)
    after = subject.driver.inspect(name)
    assert before is not None and after is not None
    assert after.resources == LARGE
    assert after.running and after.pid == before.pid  # not restarted


def test_stop_then_start(subject: Subject) -> None:
    name = subject.provision("stopstart")
    before = subject.driver.inspect(name)
    assert before is not None and before.address is not None
    subject.driver.stop(name)
    subject.driver.stop(name)  # twice is fine
    stopped = subject.driver.inspect(name)
    assert stopped is not None and not stopped.running and stopped.pid is None
    # A stopped (sleeping) tenant keeps its limits, address and firewall as the planner sees them: nothing
    # to repair, so a wake is one start.
    assert (stopped.resources, stopped.network, stopped.address) == (SMALL, WEB, before.address)
    assert stopped.problems == ()
    subject.driver.start(name)
    subject.driver.start(name)  # twice is one container
    started = subject.driver.inspect(name)
    assert started is not None and started.running and started.pid is not None
    assert (started.resources, started.network, started.address) == (SMALL, WEB, before.address)
    assert started.problems == ()


def test_limits_changed_while_stopped_hold_from_the_next_start(subject: Subject) -> None:
    name = subject.provision("requota-stopped")
    subject.driver.stop(name)
    subject.driver.apply_resources(name, LARGE)
    stopped = subject.driver.inspect(name)
    assert stopped is not None and not stopped.running and stopped.resources == LARGE
    subject.driver.start(name)
    started = subject.driver.inspect(name)
    assert started is not None and started.running and started.resources == LARGE


def test_delete_returns_a_receipt_and_twice_is_fine(subject: Subject) -> None:
    name = subject.provision("delete")
    receipt = subject.driver.delete(name)
    assert receipt.tenant == name and receipt.removed
    assert subject.driver.inspect(name) is None
    again = subject.driver.delete(name)
    assert again.removed == ()
    assert name not in {o.name for o in subject.driver.list()}


def test_list_shows_only_owned_tenants(subject: Subject) -> None:
    owned = {subject.provision("owned-a"), subject.provision("owned-b")}
    foreign = subject.make_foreign()
    listed = {o.name for o in subject.driver.list() if o.name.startswith(PREFIX)}
    assert listed == owned
    assert not set(foreign) & listed


def test_missing_tenant_is_none_or_not_found(subject: Subject) -> None:
    name = PREFIX + "absent"
    assert subject.driver.inspect(name) is None
    with pytest.raises(NotFound):
        subject.driver.apply_resources(name, SMALL)
    with pytest.raises(NotFound):
        subject.driver.start(name)


def test_make_template_imports_once_and_tenants_clone_from_it(subject: Subject, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    for directory in ("usr/bin", "fleet", "srv/www", "etc", "proc", "sys", "dev", "tmp"):
        (rootfs / directory).mkdir(parents=True)
    (rootfs / "fleet/init").write_text("#!/bin/sh\nexec sleep 3600\n")
    (rootfs / "fleet/init").chmod(0o755)
    template = BASE.model_copy(update={"name": "conftpl", "version": "1"})
    source = TemplateSource(kind="rootfs", path=rootfs)
    lines: list[str] = []
    assert subject.driver.make_template(template, source, lines.append) is True
    assert subject.driver.make_template(template, source) is False, "already there: left as it is"
    name = PREFIX + "fromtpl"
    subject.made.append(name)
    subject.driver.clone(name, template)
    observed = subject.driver.inspect(name)
    assert observed is not None and observed.template == "conftpl@1"


def test_make_template_from_a_missing_source_is_a_permanent_error(subject: Subject, tmp_path: Path) -> None:
    template = BASE.model_copy(update={"name": "confmissing", "version": "1"})
    with pytest.raises(PermanentError):
        subject.driver.make_template(template, TemplateSource(kind="tarball", path=tmp_path / "absent.tar"))


def _converge(subject: Subject, name: str) -> Observed:
    """Reconcile passes, as the controller makes them (a transient error is retried), until the tenant
    is what the spec says."""

    def one_pass() -> Observed | None:
        try:
            subject.driver.clone(name, BASE)
            subject.driver.apply_resources(name, SMALL)
            subject.driver.apply_network(name, WEB)
            subject.driver.start(name)
        except TransientError:
            return None
        seen = subject.driver.inspect(name)
        return seen if seen is not None and seen.running and not seen.problems else None

    observed = wait_for(one_pass, timeout=60, interval=0.1, what=f"{name} to converge")
    assert observed.resources == SMALL and observed.network == WEB and observed.address is not None
    return observed


def test_drift_behind_the_drivers_back_is_seen_and_repaired(subject: Subject) -> None:
    name = subject.provision("drift")
    subject.kill_behind_back(name)
    killed = subject.driver.inspect(name)
    assert killed is not None and not killed.running and killed.pid is None
    subject.driver.start(name)
    subject.raise_cpu_behind_back(name)
    changed = subject.driver.inspect(name)
    assert changed is not None and changed.running and changed.resources.cpu == 2000
    subject.driver.apply_resources(name, SMALL)
    repaired = subject.driver.inspect(name)
    assert repaired is not None and repaired.resources == SMALL and repaired.pid == changed.pid
    subject.remove_behind_back(name)
    assert subject.driver.inspect(name) is None
    _converge(subject, name)


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_a_crash_in_each_step_converges_and_delete_leaves_nothing(subject: Subject, step: str) -> None:
    name = f"{PREFIX}crash-{CRASH_STEPS.index(step)}"
    subject.made.append(name)
    subject.crash_at(name, step)
    _converge(subject, name)
    receipt = subject.driver.delete(name)
    assert receipt.removed
    assert subject.driver.inspect(name) is None and name not in {o.name for o in subject.driver.list()}
    assert subject.leftovers(name) == []


def _run(process: object) -> tuple[int, bytes, bytes]:
    """Read a command's output to its end and its exit code (the streams of `Driver.exec`)."""
    import os
    import select

    from drivers import ExecProcess

    assert isinstance(process, ExecProcess)
    streams = {process.stdout: b"", **({process.stderr: b""} if process.stderr is not None else {})}
    open_streams = set(streams)
    while open_streams:
        for fd in select.select(list(open_streams), [], [], 10)[0]:
            chunk = os.read(fd, 65536)
            if chunk:
                streams[fd] += chunk
            else:
                open_streams.discard(fd)
    code = process.wait(10)
    process.close()
    return code, streams[process.stdout], streams.get(process.stderr, b"") if process.stderr is not None else b""


def test_exec_runs_in_a_running_tenant_and_is_refused_in_a_stopped_one(subject: Subject) -> None:
    from drivers import ExecRequest

    name = subject.provision("exec")
    assert _run(subject.driver.exec(name, ExecRequest(("echo", "a", "$b")))) == (0, b"a $b\n", b"")
    assert _run(subject.driver.exec(name, ExecRequest(("false",))))[0] == 1
    missing = _run(subject.driver.exec(name, ExecRequest(("no-such-command",))))
    assert missing[0] == 127 and b"not found" in missing[2]
    cat = subject.driver.exec(name, ExecRequest(("cat",)))
    cat.write(b"through stdin")
    cat.close_stdin()
    assert _run(cat) == (0, b"through stdin", b"")
    subject.driver.stop(name)
    with pytest.raises(PermanentError) as stopped:
        subject.driver.exec(name, ExecRequest(("true",)))
    assert stopped.value.reason == "NotRunning"
