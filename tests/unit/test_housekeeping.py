"""Housekeeping on both stores: events, webhook events, idempotency keys and tombstones pruned by age, in
short transactions, never what an unfinished delete needs; the watch feed's horizon moves with the
tombstones pruned."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from reconciler.housekeeping import Housekeeper, HousekeeperConfig, parse_retention
from specs import PermanentError
from state import Store
from state.access import Access, StoredResponse
from state.access_schema import IDEMPOTENCY_KEYS, WEBHOOK_EVENTS
from state.errors import RevisionCompacted
from state.feed import FeedKind, WatchFeed
from state.housekeeping import Housekeeping, Retention
from state.schema import EVENTS, TOMBSTONES
from tests.helpers import tenant

pytestmark = pytest.mark.both_stores

NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(days=400)


def _insert(store: Store, table: Any, rows: list[dict[str, Any]]) -> None:
    with store.engine.begin() as conn:
        conn.execute(table.insert(), rows)


def _count(store: Store, table: Any, *where: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def _event(tenant: str, at: datetime) -> dict[str, Any]:
    return {"tenant": tenant, "reason": "Started", "message": "", "created_at": at}


def _webhook_event(event_id: str, tenant: str | None, at: datetime) -> dict[str, Any]:
    return {"event_id": event_id, "type": "customer.subscription.updated", "tenant": tenant, "outcome": "applied",
            "received_at": at}


def test_records_older_than_their_retention_are_pruned_and_newer_ones_kept(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    _insert(store, EVENTS, [_event("acme", LONG_AGO), _event("acme", NOW - timedelta(days=29))])
    _insert(store, WEBHOOK_EVENTS, [_webhook_event("evt_old", "acme", LONG_AGO),
                                    _webhook_event("evt_new", "acme", NOW - timedelta(days=29))])
    Access(store).store_response(principal="billing", key="k-new", response=StoredResponse("h", 201, "{}"))
    _insert(store, IDEMPOTENCY_KEYS, [{"principal": "billing", "key": "k-old", "request_hash": "h", "status_code": 201,
                                       "response_body": "{}", "created_at": NOW - timedelta(hours=25)}])

    pruned = Housekeeping(store).prune(Retention(), now=NOW)

    assert (pruned.events, pruned.webhook_events, pruned.idempotency_keys) == (1, 1, 1)
    assert _count(store, EVENTS) == 1 and _count(store, WEBHOOK_EVENTS, WEBHOOK_EVENTS.c.event_id == "evt_new") == 1
    assert Access(store).stored_response(principal="billing", key="k-new") is not None
    assert Access(store).stored_response(principal="billing", key="k-old") is None
    assert Housekeeping(store).prune(Retention(), now=NOW).total == 0, "a second pass finds nothing"


def test_nothing_an_unfinished_delete_needs_is_pruned_until_it_finishes(store: Store) -> None:
    store.apply_tenants([tenant("leaving"), tenant("staying")])
    store.request_delete("leaving")  # its delete is not finished: its story and its billing events stay
    _insert(store, EVENTS, [_event("leaving", LONG_AGO), _event("staying", LONG_AGO)])
    _insert(store, WEBHOOK_EVENTS, [_webhook_event("evt_leaving", "leaving", LONG_AGO),
                                    _webhook_event("evt_none", None, LONG_AGO)])

    first = Housekeeping(store).prune(Retention(), now=NOW)

    assert (first.events, first.webhook_events) == (1, 1)
    assert _count(store, EVENTS, EVENTS.c.tenant == "leaving") == 1
    assert _count(store, WEBHOOK_EVENTS, WEBHOOK_EVENTS.c.event_id == "evt_leaving") == 1
    store.finalize_delete("leaving")
    after = Housekeeping(store).prune(Retention(), now=NOW)
    assert (after.events, after.webhook_events) == (1, 1), "once the delete finished, they age out as any other"


def test_pruning_goes_in_short_transactions_and_a_backlog_over_several_passes(store: Store) -> None:
    store.apply_tenant(tenant("busy"))
    _insert(store, EVENTS, [_event("busy", LONG_AGO) for _ in range(10)])
    housekeeping = Housekeeping(store, batch=3, max_batches=2)
    transactions: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: transactions.append(1))
    assert housekeeping.prune(Retention(), now=NOW).events == 6  # two transactions of three
    assert housekeeping.prune(Retention(), now=NOW).events == 4
    assert _count(store, EVENTS) == 0
    assert len(transactions) >= 4


def test_pruned_tombstones_move_the_horizon_and_an_older_watcher_is_refused(store: Store) -> None:
    feed = WatchFeed(store)
    store.apply_tenants([tenant("a"), tenant("b"), tenant("c")])
    behind = store.current_revision()
    for name in ("a", "b"):
        store.request_delete(name)
        store.finalize_delete(name)
    newest_pruned = store.current_revision()
    assert [(e.kind, e.name) for e in feed.since(behind)] == [(FeedKind.DELETED, "a"), (FeedKind.DELETED, "b")]

    pruned = Housekeeping(store).prune(Retention(tombstones=timedelta(days=1)), now=NOW + timedelta(days=2))

    assert (pruned.tombstones, pruned.horizon) == (2, newest_pruned)
    assert _count(store, TOMBSTONES) == 0
    with pytest.raises(RevisionCompacted) as refused:
        feed.since(behind)
    assert refused.value.horizon == newest_pruned
    assert feed.since(newest_pruned) == [], "from the horizon on, nothing was lost"
    assert {e.name for e in feed.since(0)} == {"c"}, "revision 0 is a fresh start: what exists"


def test_the_housekeeper_prunes_with_the_retention_it_is_given(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    _insert(store, EVENTS, [_event("acme", NOW - timedelta(hours=2)), _event("acme", NOW)])
    housekeeper = Housekeeper(store, HousekeeperConfig(retention=parse_retention(["events=1h"])), now=lambda: NOW)
    assert housekeeper.run_once().events == 1


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], Retention()),
        (["events=7d", "idempotency-keys=1h"],
         Retention(events=timedelta(days=7), idempotency_keys=timedelta(hours=1))),
        (["webhook_events=90m", "tombstones=3600s"],
         Retention(webhook_events=timedelta(minutes=90), tombstones=timedelta(hours=1))),
    ],
)
def test_retention_settings_are_kind_equals_duration_over_the_defaults(pairs: list[str], expected: Retention) -> None:
    assert parse_retention(pairs) == expected


@pytest.mark.parametrize(("pair", "says"), [("logs=1d", "is not one of"), ("events=1w", "whole number"),
                                            ("events=0d", "not 0"), ("events", "whole number")])
def test_a_bad_retention_setting_names_the_flag_and_the_rule(pair: str, says: str) -> None:
    with pytest.raises(PermanentError, match=f"--retain: .*{says}"):
        parse_retention([pair])
