"""The SQL contract a billing system relies on, exercised with raw SQL from another process, on both engines:
the sqlite3 shell against SQLite, psql against PostgreSQL."""

import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from specs import Resources
from state import AlreadyExists, Conflict, InvalidRecord, Store
from state.migrations import MIGRATIONS
from tests.helpers import tenant

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.both_stores


def _db_path(store: Store) -> str:
    return store.url.removeprefix("sqlite:///")


def _sqlite3_shell(store: Store, sql: str) -> subprocess.CompletedProcess[str]:
    """Run SQL the way a billing engineer would: the database's own shell, a separate process."""
    if store.url.startswith("postgresql"):
        psql = shutil.which("psql") or "psql"
        return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", store.url, "-c", sql],
                              capture_output=True, text=True, timeout=30)
    return subprocess.run(["sqlite3", _db_path(store), sql], capture_output=True, text=True, timeout=30)


def _row(store: Store, name: str) -> Any:
    if store.url.startswith("postgresql"):
        with psycopg.connect(store.url, row_factory=dict_row) as pg:
            return pg.execute("SELECT * FROM tenants WHERE name = %s", (name,)).fetchone()
    with sqlite3.connect(_db_path(store)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM tenants WHERE name = ?", (name,)).fetchone()


needs_shell = pytest.mark.skipif(
    subprocess.run(["which", "sqlite3"], capture_output=True).returncode != 0,
    reason="the sqlite3 shell is not installed (apt-get install sqlite3)",
)


@needs_shell
def test_a_minimal_raw_insert_gets_defaults_generation_and_revision(store: Store) -> None:
    result = _sqlite3_shell(store, "INSERT INTO tenants (name, template) VALUES ('acme', 'base');")
    assert result.returncode == 0, result.stderr
    desired = store.desired("acme")
    assert desired is not None and desired.spec is not None
    assert desired.spec.generation == 1
    assert desired.revision > 0
    # NULL resources resolve to the template's defaults.
    assert desired.spec.resources.memory == 256 << 20
    assert desired.spec.network.ingress == (80,)


@needs_shell
def test_a_raw_update_of_the_spec_bumps_generation_and_revision(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    before = _row(store, "acme")
    assert before is not None
    result = _sqlite3_shell(store, "UPDATE tenants SET memory_bytes = 536870912 WHERE name = 'acme';")
    assert result.returncode == 0, result.stderr
    after = _row(store, "acme")
    assert after is not None
    assert after["generation"] == before["generation"] + 1
    assert after["revision"] > before["revision"]


@needs_shell
def test_a_raw_update_of_the_disk_bandwidth_bumps_generation(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    before = _row(store, "acme")
    assert before is not None and before["io_bytes_per_second"] is None
    result = _sqlite3_shell(store, "UPDATE tenants SET io_bytes_per_second = 52428800 WHERE name = 'acme';")
    assert result.returncode == 0, result.stderr
    after = _row(store, "acme")
    assert after is not None
    assert after["generation"] == before["generation"] + 1
    desired = store.desired("acme")
    assert desired is not None and desired.spec is not None and desired.spec.resources.io == 50 << 20


def test_disk_bandwidth_is_stored_defaulted_from_the_template_and_a_change_is_a_new_generation(store: Store) -> None:
    created = store.apply_tenant(tenant("acme", resources={"io": "50Mi"}))
    assert created.tenant is not None and created.tenant.spec.resources.io == 50 << 20
    assert store.apply_tenant(tenant("acme", resources={"io": "50Mi"})).outcome == "unchanged"
    changed = store.apply_tenant(tenant("acme", resources={"io": "200Mi"}))
    assert (changed.outcome, changed.generation) == ("configured", 2)
    reset = store.apply_tenant(tenant("acme"))
    assert reset.generation == 3
    assert reset.desired is not None and reset.desired.spec is not None
    assert reset.desired.spec.resources.io == 100 << 20, "unset: the built-in template's 100Mi"


def test_a_bandwidth_the_database_refuses_names_the_spec_field(store: Store) -> None:
    bad = tenant("acme")
    bad = bad.model_copy(update={"spec": bad.spec.model_copy(update={"resources": Resources.model_construct(io=1)})})
    with pytest.raises(InvalidRecord) as info:
        store.apply_tenant(bad)
    assert (info.value.field, info.value.rule) == ("spec.resources.io", "must be between 1Mi and 1Ti")
    assert store.get_tenant("acme") is None


def test_a_template_without_a_bandwidth_is_accepted_and_leaves_its_tenants_unlimited(store: Store) -> None:
    from specs import Template

    store.upsert_template(Template.model_validate(
        {"name": "old", "resources": {"cpu": "1", "memory": "512Mi", "disk": "2Gi", "pids": 512}}))
    template = store.get_template("old")
    assert template is not None and template.resources.io is None
    store.apply_tenant(tenant("acme", template="old"))
    desired = store.desired("acme")
    assert desired is not None and desired.spec is not None and desired.spec.resources.io is None


@needs_shell
def test_a_label_only_update_gets_a_new_revision_but_the_same_generation(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    before = _row(store, "acme")
    assert before is not None
    _sqlite3_shell(store, "UPDATE tenants SET labels = '{\"plan\": \"pro\"}' WHERE name = 'acme';")
    after = _row(store, "acme")
    assert after is not None
    assert (after["generation"], after["revision"] > before["revision"]) == (before["generation"], True)


@needs_shell
@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("INSERT INTO tenants (name, template) VALUES ('Bad_Name', 'base')", "name_must_be_a_dns_label"),
        ("INSERT INTO tenants (name, template) VALUES ('acme', 'nope')", "template: unknown template"),
        (
            "INSERT INTO tenants (name, template, memory_bytes) VALUES ('acme', 'base', 4096)",
            "memory_bytes_must_be_between_16Mi_and_1Ti",
        ),
        (
            "INSERT INTO tenants (name, template, ingress_ports) VALUES ('acme', 'base', '[80, 70000]')",
            "ingress_ports: ports must be whole numbers",
        ),
        ("INSERT INTO tenants (name, template, labels) VALUES ('acme', 'base', 'x')", "labels_must_be_a_json_object"),
        ("INSERT INTO tenants (name, template, pids) VALUES ('acme', 'base', 1)", "pids_must_be_between_8_and"),
        (
            "INSERT INTO tenants (name, template, memory_bytes) VALUES ('acme', 'base', 100000000)",
            "memory_bytes",
        ),
        (
            "INSERT INTO tenants (name, template, io_bytes_per_second) VALUES ('acme', 'base', 10240)",
            "io_bytes_per_second_must_be_between_1Mi_and_1Ti",
        ),
        (
            "INSERT INTO plans (id, template, io_bytes_per_second) VALUES ('price_x', 'base', 2199023255552)",
            "io_bytes_per_second_must_be_between_1Mi_and_1Ti",
        ),
        ("UPDATE templates SET io_bytes_per_second = 0", "io_bytes_per_second_must_be_between_1Mi_and_1Ti"),
    ],
)
def test_an_invalid_raw_row_is_rejected_by_the_database(store: Store, sql: str, rule: str) -> None:
    result = _sqlite3_shell(store, sql + ";")
    assert result.returncode != 0
    assert rule in result.stderr
    assert store.list_tenants().items == []


@needs_shell
def test_a_raw_delete_becomes_a_delete_request_and_is_never_lost(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    result = _sqlite3_shell(store, "DELETE FROM tenants WHERE name = 'acme';")
    assert result.returncode == 0, result.stderr
    row = _row(store, "acme")
    assert row is not None, "the row must stay until the reconciler has removed the container"
    assert row["deletion_requested_at"] is not None
    undo = _sqlite3_shell(store, "UPDATE tenants SET deletion_requested_at = NULL WHERE name = 'acme';")
    assert undo.returncode != 0 and "cannot be taken back" in undo.stderr


def test_the_store_refuses_an_unknown_template_naming_the_field(store: Store) -> None:
    with pytest.raises(InvalidRecord) as info:
        store.apply_tenant(tenant("acme", template="nope"))
    assert info.value.field == "spec.template"


def test_applying_a_batch_is_all_or_nothing(store: Store) -> None:
    with pytest.raises(InvalidRecord):
        store.apply_tenants([tenant("good"), tenant("bad", template="nope")])
    assert store.list_tenants().items == []


def test_a_dry_run_writes_nothing(store: Store) -> None:
    result = store.apply_tenant(tenant("acme"), dry_run=True)
    assert result.outcome == "created"
    assert store.get_tenant("acme") is None


def test_reapplying_the_same_spec_changes_nothing(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    revision = store.current_revision()
    assert store.apply_tenant(tenant("acme")).outcome == "unchanged"
    assert store.current_revision() == revision


def test_a_tenant_being_deleted_cannot_be_reconfigured(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    store.request_delete("acme")
    with pytest.raises(Conflict, match="being deleted"):
        store.apply_tenant(tenant("acme", resources={"memory": "1Gi"}))


@needs_shell
def test_events_are_append_only(store: Store, tmp_path: Path) -> None:
    from specs import Event

    store.append_events([Event(tenant="acme", reason="Cloned", message="x")])
    result = _sqlite3_shell(store, "UPDATE events SET message = 'rewritten';")
    assert result.returncode != 0 and "append-only" in result.stderr
    assert [e.message for e in store.events(tenant="acme")] == ["x"]


def test_binding_is_compare_and_set(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    assert store.bind("acme", "n1") is True
    assert store.bind("acme", "n2") is False
    desired = store.desired("acme")
    assert desired is not None and desired.node == "n1"


def test_the_schema_is_migrated_once_and_reopening_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    first = Store(url)
    first.apply_tenant(tenant("acme"))
    first.close()
    second = Store(url)
    assert second.get_tenant("acme") is not None
    with sqlite3.connect(tmp_path / "f.db") as conn:
        from state.migrations import MIGRATIONS

        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in MIGRATIONS], "each migration applied exactly once"
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    second.close()


def test_an_up_to_date_store_opens_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """Opening a store only reads its schema version when there is nothing to migrate: `fleet get` answers
    while the operator (or a raw SQL writer) is in the middle of a write."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    first = Store(url)
    first.apply_tenant(tenant("acme"))
    first.close()
    writer = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock until the end of the test
    try:
        second = Store(url)
        assert second.get_tenant("acme") is not None
        second.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


@needs_shell
def test_a_store_made_before_disk_bandwidth_is_migrated_once_and_gets_it(
    store_engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A version-5 store dumped by the previous Fleet: migration 6 adds the io columns with their CHECKs,
    makes an io change bump generation, and gives the built-in template 100Mi/s; nothing else changes."""
    if store_engine == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        load = [shutil.which("psql") or "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url,
                "-f", str(DATA / "store_v5.postgresql.sql")]
    else:
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
        load = ["sqlite3", str(tmp_path / "fleet.db"), f".read {DATA / 'store_v5.sqlite.sql'}"]
    loaded = subprocess.run(load, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    store = Store(url)
    try:
        base = store.get_template("base")
        assert base is not None and base.resources.io == 100 << 20
        acme = store.get_tenant("acme")
        assert acme is not None and acme.metadata.generation == 1
        assert (acme.spec.resources.pids, acme.spec.resources.io) == (64, None)
        desired = store.desired("acme")
        assert desired is not None and desired.spec is not None and desired.spec.resources.io == 100 << 20
        from state.access import Access

        plan = Access(store).get_plan("price_basic")
        assert plan is not None and (plan.resources.memory, plan.resources.io) == (128 << 20, None)
        refused = _sqlite3_shell(store, "UPDATE tenants SET io_bytes_per_second = 1024 WHERE name = 'acme';")
        assert refused.returncode != 0 and "io_bytes_per_second_must_be_between_1Mi_and_1Ti" in refused.stderr
        for table in ("templates", "plans"):
            refused = _sqlite3_shell(store, f"UPDATE {table} SET io_bytes_per_second = 1;")
            assert refused.returncode != 0 and "io_bytes_per_second_must_be_between" in refused.stderr, table
        changed = _sqlite3_shell(store, "UPDATE tenants SET io_bytes_per_second = 52428800 WHERE name = 'acme';")
        assert changed.returncode == 0, changed.stderr
        assert _row(store, "acme")["generation"] == 2
    finally:
        store.close()
    again = Store(url)  # reopening migrates nothing more
    try:
        versions = again.engine.connect().exec_driver_sql("SELECT version FROM schema_migrations ORDER BY version")
        assert [row[0] for row in versions] == [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        again.close()


def test_the_change_feed_misses_no_write_from_concurrent_writers(store: Store) -> None:
    """PostgreSQL can commit transactions out of revision order; a reader of `revision > last_seen` must
    still see every write (revisions are stamped under a lock held until commit)."""
    import threading

    writers, per_writer = 4, 40
    done = threading.Event()
    seen: set[str] = set()

    def write(index: int) -> None:
        for n in range(per_writer):
            store.apply_tenant(tenant(f"w{index}-{n}"))

    def follow() -> None:
        last = 0
        while True:
            finished = done.is_set()
            for change in store.changes_since(last):
                seen.add(change.name)
                last = change.revision
            if finished:
                return

    reader = threading.Thread(target=follow)
    reader.start()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    reader.join(60)
    assert seen == {f"w{i}-{n}" for i in range(writers) for n in range(per_writer)}


def test_a_postgresql_store_is_migrated_once_by_processes_starting_together(postgres_url: str) -> None:
    import threading

    stores: list[Store] = []
    threads = [threading.Thread(target=lambda: stores.append(Store(postgres_url))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(stores) == 4
    with psycopg.connect(postgres_url) as pg:
        versions = [row[0] for row in pg.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == sorted(m.version for m in MIGRATIONS)
    for s in stores:
        s.close()


def test_a_finalized_tenant_leaves_a_tombstone_newer_than_its_last_write(store: Store) -> None:
    store.apply_tenant(tenant("gone"))
    store.request_delete("gone")
    before = store.current_revision()
    assert store.deletions_since(0) == []
    store.finalize_delete("gone")
    deletions = store.deletions_since(before)
    assert [d.name for d in deletions] == ["gone"] and deletions[0].revision > before
    assert store.current_revision() == deletions[0].revision
    store.apply_tenant(tenant("gone"))  # the name comes back: its tombstone stays older than the new record
    store.request_delete("gone")
    store.finalize_delete("gone")
    assert [d.name for d in store.deletions_since(0)] == ["gone"], "one tombstone per name, the newest"
    assert store.deletions_since(0)[0].revision > deletions[0].revision


def test_create_refuses_a_name_that_exists_and_writes_nothing(store: Store) -> None:
    created = store.create_tenant(tenant("solo"))
    assert created.tenant is not None and created.tenant.metadata.generation == 1
    with pytest.raises(AlreadyExists, match=r"metadata\.name: tenant solo already exists"):
        store.create_tenant(tenant("solo", paused=True))
    existing = store.get_tenant("solo")
    assert existing is not None and existing.spec.paused is False


@needs_shell
def test_a_tenant_created_again_under_its_name_is_another_tenant_and_no_update_changes_which(store: Store) -> None:
    """`created_revision` (migration 8): stamped on insert, raw SQL included, kept by every update (a raw one
    that tries to change it too), and new for a tenant deleted and created again under the same name, even
    where the database reuses the deleted row's id (SQLite)."""
    inserted = _sqlite3_shell(store, "INSERT INTO tenants (name, template) VALUES ('acme', 'base');")
    assert inserted.returncode == 0, inserted.stderr
    first = store.desired("acme")
    assert first is not None and first.created_revision == first.revision
    store.apply_tenant(tenant("acme", paused=True))
    changed = _sqlite3_shell(store, "UPDATE tenants SET created_revision = 1, paused = false WHERE name = 'acme';")
    assert changed.returncode == 0, changed.stderr
    updated = store.desired("acme")
    assert updated is not None and updated.revision > first.revision
    assert updated.created_revision == first.created_revision and _row(store, "acme")["created_revision"] == (
        first.created_revision)
    store.request_delete("acme")
    store.finalize_delete("acme")
    store.apply_tenant(tenant("acme"))
    again = store.desired("acme")
    assert again is not None and again.created_revision is not None
    assert again.created_revision > updated.revision


@needs_shell
def test_a_store_made_before_tenant_identity_gives_its_tenants_one(
    store_engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A version-5 store (before migration 8): its tenants get their current revision as their identity, and
    tenants created afterwards a newer one."""
    if store_engine == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        load = [shutil.which("psql") or "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url,
                "-f", str(DATA / "store_v5.postgresql.sql")]
    else:
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
        load = ["sqlite3", str(tmp_path / "fleet.db"), f".read {DATA / 'store_v5.sqlite.sql'}"]
    loaded = subprocess.run(load, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    store = Store(url)
    try:
        old = store.desired("acme")
        assert old is not None and old.created_revision is not None
        store.apply_tenant(tenant("acme", paused=True))
        kept = store.desired("acme")
        assert kept is not None and kept.created_revision == old.created_revision
        store.apply_tenant(tenant("newer"))
        newer = store.desired("newer")
        assert newer is not None and newer.created_revision is not None
        assert newer.created_revision > old.created_revision
    finally:
        store.close()
