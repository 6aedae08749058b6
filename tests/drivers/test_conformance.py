"""The Driver contract, run against every driver: the fake (always) and nspawn (where the host can).

A driver that passes here can stand in for another under the reconciler; the fake's semantics are the
reference, the real driver must not differ from them in anything the planner can observe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.base import Driver
from drivers.fake import FakeDriver
from specs import Network, NotFound, PermanentError, Resources, TemplateSource

pytest.register_assert_rewrite("tests.integration.conftest_runtime")  # before the import: its asserts are rewritten
from tests.integration.conftest_runtime import BASE, TEST_PREFIX  # noqa: E402

pytest_plugins = ["tests.integration.conftest_runtime"]

PREFIX = f"{TEST_PREFIX}conf-"
SMALL = Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi")
LARGE = Resources(cpu="1.5", memory="192Mi", pids=256, disk="256Mi")
WEB = Network(ingress=(80,))


@dataclass
class Subject:
    driver: Driver
    made: list[str] = field(default_factory=list)
    # Puts things on the host that look like a tenant but lack Fleet's marker; returns their names.
    make_foreign: Callable[[], list[str]] = lambda: []

    def provision(self, suffix: str, resources: Resources = SMALL, network: Network = WEB) -> str:
        name = PREFIX + suffix
        self.made.append(name)
        self.driver.clone(name, BASE)
        self.driver.apply_resources(name, resources)
        self.driver.apply_network(name, network)
        self.driver.start(name)
        return name


def _nspawn_subject(request: pytest.FixtureRequest) -> Subject:
    from drivers.nspawn import NspawnDriver

    driver = request.getfixturevalue("nspawn_driver")
    assert isinstance(driver, NspawnDriver)

    def make_foreign() -> list[str]:
        stranger = driver.pool.tenants_dir / f"{PREFIX}stranger"  # a plain directory: no subvolume, no marker
        stranger.mkdir(exist_ok=True)
        request.addfinalizer(stranger.rmdir)
        return [stranger.name]

    return Subject(driver, make_foreign=make_foreign)


@pytest.fixture(params=["fake", pytest.param("nspawn", marks=[pytest.mark.root])])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    made = Subject(FakeDriver(node="conformance")) if request.param == "fake" else _nspawn_subject(request)
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
    subject.driver.stop(name)
    subject.driver.stop(name)  # twice is fine
    stopped = subject.driver.inspect(name)
    assert stopped is not None and not stopped.running and stopped.pid is None
    subject.driver.start(name)
    subject.driver.start(name)  # twice is one container
    started = subject.driver.inspect(name)
    assert started is not None and started.running and started.pid is not None


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
