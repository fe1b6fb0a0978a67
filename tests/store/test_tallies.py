"""Day tallies: the database keeps them exact however events change, and a decision read from
them answers as one that reads every event: the same fields used and dropped (counts included),
the same retention cutoff to the microsecond, the same items left out, scores within the bound
the scorer documents."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
import yaml
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway
from gateway import keyring, scoring
from gateway.crypto import encrypt_field
from gateway.policy.engine import Holding, HoldingKind, decide
from gateway.retention import purge_expired
from gateway.store.consents import as_events, consent_records
from gateway.store.db import database, write_transaction
from gateway.store.models import Event, EventTally
from gateway.store.profiles import NewEvent, add_events, everything
from gateway.store.subjects import data_key, ensure_subject, find_subject
from tests import test_concurrency
from tests.api.test_erasure_fail_closed import commit_fails
from tests.conftest import Caller
from tests.stores import Raw, raw
from tests.test_concurrency import call

server = test_concurrency.server  # a real three-worker server, with an admin key

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
BROWSING, PURCHASES, WINDOW = timedelta(days=90), timedelta(days=365), timedelta(days=30)
CONSENT = {"granted": True, "source": "test", "notice_version": "1"}
CANDIDATES: list[dict[str, Any]] = [
    {"id": id_, "category": category}
    for id_, category in [("s-1", "shoes"), ("b-1", "books"), ("g-1", "garden"), ("p-7", "toys")]
]
HYPOTHESIS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_subjects = itertools.count()


# --- what the tallies must be: every event counted, computed here from the event rows -----------


def _when(value: Any) -> datetime:
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return stamp.replace(tzinfo=None)


def counted(db: Raw) -> dict[tuple[Any, ...], tuple[int, int]]:
    """(subject, database, type, day, sealed, category) -> (count, milliseconds past midnight)
    of the stored events, counted in Python."""
    found: dict[tuple[Any, ...], tuple[int, int]] = {}
    rows = db.execute(
        "SELECT subject_id, database, type, at, sealed, item_category FROM event"
    ).fetchall()
    for subject, database_id, kind, at, sealed, category in rows:
        stamp = _when(at)
        key = (subject, database_id, kind, stamp.date(), bool(sealed), category)
        ms = (stamp - datetime.combine(stamp.date(), time())) / timedelta(milliseconds=1)
        count, moment = found.get(key, (0, 0))
        found[key] = (count + 1, moment + round(ms))
    return found


def stored(db: Raw) -> dict[tuple[Any, ...], tuple[int, int]]:
    rows = db.execute(
        "SELECT subject_id, database, type, day, sealed, category, count, moment FROM event_tally"
    ).fetchall()
    return {
        (s, d, k, date(1970, 1, 1) + timedelta(days=day), bool(x), c): (n, m)
        for s, d, k, day, x, c, n, m in rows
    }


def assert_tallies_exact(app: Flask) -> None:
    with raw(app.config) as db:
        expected, found = counted(db), stored(db)
    assert found.keys() == expected.keys()
    for key, (count, moment) in found.items():
        assert count == expected[key][0] > 0
        # each event's milliseconds as the database rounds them: at most one apart from ours
        assert abs(moment - expected[key][1]) <= count


# --- the tallies follow every change, whoever makes it -----------------------------------------

times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 1, 4), timezones=st.just(UTC)
)
labels = st.sampled_from(["shoes", "books", "größe", "🧦", "a" * 256])
new_events = st.lists(
    st.builds(
        NewEvent, st.sampled_from(["view", "click"]), st.just("i"), labels, times, st.booleans()
    ),
    min_size=1,
    max_size=6,
)
changes = st.one_of(
    st.tuples(st.just("collect"), st.integers(0, 1), new_events),
    st.tuples(st.just("delete"), st.integers(0, 5)),
    st.tuples(st.just("move"), st.integers(0, 5), times),
    st.tuples(st.just("relabel"), st.integers(0, 5), labels),
    st.tuples(st.just("erase"), st.integers(0, 1)),
)


def apply(app: Flask, change: tuple[Any, ...]) -> None:
    """A change made by the gateway (collect, erase), or behind its back with SQL on a
    connection of its own (delete, move, relabel)."""
    what = change[0]
    if what in ("collect", "erase"):
        with app.app_context(), database.connection_context(), write_transaction():
            pseudonym = keyring().pseudonym(f"tally-{change[1]}")
            subject = ensure_subject(keyring(), pseudonym, NOW)
            if what == "collect":
                add_events(subject, "shop_events", change[2], keyring(), NOW)
            else:
                Event.delete().where(Event.subject == subject).execute()
                subject.delete_instance()
        return
    with raw(app.config) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM event ORDER BY id").fetchall()]
        if not ids:
            return
        target = ids[change[1] % len(ids)]
        if what == "delete":
            db.execute("DELETE FROM event WHERE id = ?", (target,))
        elif what == "move":
            db.execute("UPDATE event SET at = ? WHERE id = ?", (_when(change[2]), target))
        else:
            db.execute("UPDATE event SET item_category = ? WHERE id = ?", (change[2], target))


@HYPOTHESIS
@given(steps=st.lists(changes, min_size=1, max_size=8))
def test_tallies_count_exactly_the_stored_events_whoever_changes_them(
    app: Flask, steps: list[tuple[Any, ...]]
) -> None:
    for change in steps:
        apply(app, change)
    assert_tallies_exact(app)


def test_a_batch_insert_and_a_grouped_delete_keep_the_tallies_exact(app: Flask) -> None:
    """Many rows of one tally in one statement each way (PostgreSQL's triggers see them as one
    transition table; SQLite's run per row)."""
    at = datetime(2026, 1, 2, 10, 30, 15, 250_000, tzinfo=UTC)
    events = [
        NewEvent("view", f"i{n}", ["shoes", "books"][n % 2], at + n * DAY / 100, False)
        for n in range(200)
    ]
    apply(app, ("collect", 0, events))
    assert_tallies_exact(app)
    with raw(app.config) as db:
        assert sum(n for n, _ in stored(db).values()) == 200
        db.execute("DELETE FROM event WHERE item_category = 'books'")
        assert {key[5] for key in stored(db)} == {"shoes"}
    assert_tallies_exact(app)
    with raw(app.config) as db:
        db.execute("DELETE FROM event")
        assert stored(db) == {}


# --- a decision on tallies answers as one on every event ---------------------------------------


def subject_with(app: Flask, shop: Caller, history: list[NewEvent]) -> str:
    """A new subject who consented to recommendations, with `history` stored as it is (old
    events too, which collection today would refuse as stale)."""
    subject = f"loyal-{next(_subjects)}"
    with time_machine.travel(NOW - DAY, tick=False):
        assert (
            shop.put(f"/v1/subjects/{subject}/consents/recommendations", CONSENT).status_code == 200
        )
    with app.app_context(), database.connection_context(), write_transaction():
        found = ensure_subject(keyring(), keyring().pseudonym(subject), NOW)
        for name in ("shop_events", "crm"):
            mine = [e for e in history if (e.type == "purchase") == (name == "crm")]
            for start in range(0, len(mine), 1000):  # as many as one statement may carry
                add_events(found, name, mine[start : start + 1000], keyring(), NOW)
    return subject


def reference(app: Flask, subject: str, purpose: str) -> tuple[Any, scoring.Ranking]:
    """The decision and ranking made from every stored event one by one, as before tallies."""
    with app.app_context(), database.connection_context():
        policies = gateway.policies()
        stored_subject = find_subject(keyring().pseudonym(subject))
        assert stored_subject is not None
        _, events = everything(stored_subject, keyring())
        consents = as_events(consent_records(stored_subject))
    held = [Holding(e["database"], HoldingKind.EVENT, e["type"], e["at"]) for e in events]
    decision = decide(
        purpose, gpc=False, consents=consents, holdings=held, policies=policies, now=NOW
    )
    allowed = {(db, kind): since for db, kind, since in decision.reads.events}
    read = [
        scoring.ProfileEvent(e["type"], e["item_id"], e["category"], e["at"])
        for e in events
        if (e["database"], e["type"]) in allowed and e["at"] > allowed[(e["database"], e["type"])]
    ]
    rules = policies.purposes[purpose].scoring
    candidates = [scoring.Candidate(**c) for c in CANDIDATES]
    ranking = scoring.rank(candidates, scoring.Profile.of_events(read), rules, now=NOW, limit=10)
    return decision, ranking


def decided(shop: Caller, subject: str, purpose: str = "recommendations") -> dict[str, Any]:
    body = {"subject_id": subject, "purpose": purpose, "candidates": CANDIDATES}
    with time_machine.travel(NOW, tick=False):
        response = shop.post("/v1/personalize?explain=true", body)
    assert response.status_code == 200, response.get_json()
    result: dict[str, Any] = response.get_json()
    return result


def assert_same_answer(app: Flask, shop: Caller, subject: str) -> dict[str, Any]:
    result = decided(shop, subject)
    assert result["personalized"] is True
    decision, ranking = reference(app, subject, "recommendations")
    assert result["fields_used"] == list(decision.fields_used)
    assert result["fields_dropped"] == [
        {"field": d.field, "database": d.database, "reason": d.reason.value, "count": d.count}
        for d in decision.fields_dropped
    ]
    assert result["excluded"] == list(ranking.excluded)
    expected = {item.id: item.score for item in ranking.items}
    assert {i["id"]: i["score"] for i in result["items"]} == pytest.approx(expected, abs=1e-3)
    return result


# Event times: at and around each cutoff (to the microsecond), and anywhere in the history.
EDGES = [NOW - BROWSING, NOW - PURCHASES, NOW - WINDOW]
NUDGES = [timedelta(0), timedelta(microseconds=1), timedelta(seconds=1), timedelta(hours=5)]
around_edges = st.builds(
    lambda edge, nudge, sign: edge + sign * nudge,
    st.sampled_from(EDGES),
    st.sampled_from(NUDGES),
    st.sampled_from([-1, 1]),
)
anywhere = st.builds(lambda hours: NOW - timedelta(hours=hours), st.integers(0, 400 * 24))
history = st.lists(
    st.builds(
        NewEvent,
        # store_visit: location, a sensitive category the purpose does not use
        st.sampled_from(["view", "click", "add_to_cart", "purchase", "store_visit"]),
        st.sampled_from(["s-1", "b-1", "p-7"]),
        st.sampled_from(["shoes", "books", "garden"]),
        st.one_of(around_edges, anywhere),
        st.just(False),
    ),
    min_size=1,
    max_size=40,
)


@HYPOTHESIS
@given(events=history)
def test_a_decision_on_tallies_answers_as_one_on_every_event(
    app: Flask, shop: Caller, events: list[NewEvent]
) -> None:
    subject = subject_with(app, shop, events)
    assert_same_answer(app, shop, subject)


@pytest.mark.parametrize("nudge", [timedelta(0), timedelta(microseconds=1), timedelta(seconds=1)])
def test_the_retention_cutoff_stays_exact_inside_a_day_of_many_events(
    app: Flask, shop: Caller, nudge: timedelta
) -> None:
    """The cutoff's day holds events on both sides of it: those at or before it are dropped
    and counted, those after it read, to the microsecond."""
    cutoff = NOW - BROWSING
    before = [NewEvent("view", f"o{n}", "garden", cutoff - n * nudge, False) for n in range(3)]
    after = [NewEvent("view", "n", "books", cutoff + (nudge or DAY / 4), False)]
    earlier = [NewEvent("view", "x", "garden", cutoff - 2 * DAY, False)]
    later = [NewEvent("view", "y", "shoes", cutoff + 3 * DAY, False)]
    subject = subject_with(app, shop, before + after + earlier + later)

    result = assert_same_answer(app, shop, subject)

    assert result["fields_dropped"] == [
        {"field": "browsing", "database": "shop_events", "reason": "retention_expired", "count": 4}
    ]
    contributions = {i["id"]: i["contributions"] for i in result["items"]}
    assert "affinity:garden" not in contributions["g-1"]
    assert set(contributions["b-1"]) == {"affinity:books"}


def test_a_purchase_inside_the_window_is_left_out_and_one_just_outside_is_not(
    app: Flask, shop: Caller
) -> None:
    edge = NOW - WINDOW
    subject = subject_with(
        app,
        shop,
        [
            NewEvent("purchase", "s-1", "shoes", edge, False),
            NewEvent("purchase", "p-7", "toys", edge - timedelta(microseconds=1), False),
        ],
    )
    result = assert_same_answer(app, shop, subject)
    assert result["excluded"] == ["s-1"]


def test_a_purge_keeps_the_tallies_exact_and_the_answer_the_same(app: Flask, shop: Caller) -> None:
    cutoff = NOW - BROWSING
    events = [
        NewEvent("view", f"v{n}", ["shoes", "books"][n % 2], cutoff + (n - 10) * DAY / 7, False)
        for n in range(20)
    ]
    subject = subject_with(app, shop, events)
    first = assert_same_answer(app, shop, subject)

    with app.app_context(), database.connection_context():
        outcome = purge_expired(gateway.policies(), NOW, actor="test", batch_size=3)
    assert sum(r.deleted for r in outcome.results) == 11  # the one at the cutoff too

    assert_tallies_exact(app)
    with raw(app.config) as db:
        days = [key[3] for key in stored(db)]
    assert min(days) == cutoff.date()  # the cutoff's day keeps its later events only
    second = assert_same_answer(app, shop, subject)
    assert second["items"] == first["items"]
    assert second["fields_used"] == first["fields_used"]
    assert first["fields_dropped"][0]["count"] == 11
    assert second["fields_dropped"] == []


def test_an_erasure_leaves_no_tally(app: Flask, shop: Caller, admin: Caller) -> None:
    now = datetime.now(UTC)
    kept = subject_with(app, shop, [NewEvent("view", "a", "shoes", now - DAY, False)])
    gone = subject_with(app, shop, [NewEvent("view", "b", "books", now - DAY, False)])

    assert admin.request("DELETE", f"/v1/subjects/{gone}").status_code == 200

    with app.app_context(), database.connection_context():
        left = {row.subject.pseudonym for row in EventTally.select()}
    assert left == {keyring_pseudonym(app, kept)}
    assert_tallies_exact(app)


def test_a_collection_or_an_erasure_failing_at_commit_leaves_the_tallies_as_they_were(
    app: Flask, shop: Caller, admin: Caller
) -> None:
    now = datetime.now(UTC)
    subject = subject_with(app, shop, [NewEvent("view", "a", "shoes", now - DAY, False)])
    with raw(app.config) as db:
        before = stored(db)
    events = [{"type": "view", "item_id": "b", "category": "books", "at": now.isoformat()}]
    body = {"database": "shop_events", "events": events}

    with commit_fails(app, "accepted", action="events.collect"):
        assert shop.post(f"/v1/subjects/{subject}/events", body).status_code == 503
    with commit_fails(app, "erased"):
        assert admin.request("DELETE", f"/v1/subjects/{subject}").status_code == 503

    with raw(app.config) as db:
        assert stored(db) == before
    assert_tallies_exact(app)
    assert shop.post(f"/v1/subjects/{subject}/events", body).status_code == 200
    assert_tallies_exact(app)


def test_collections_and_decisions_racing_on_one_subject_keep_the_tallies_exact(
    app: Flask, server: tuple[str, str]
) -> None:
    """A real three-worker server: eight clients collect into the same tallies (one subject,
    one day, two categories) while others decide; every accepted event is counted once."""
    base, key = server
    now = datetime.now(UTC)
    assert call(base, key, "PUT", "/v1/subjects/racer/consents/recommendations", CONSENT)[0] == 200
    accepted: list[int] = []
    failures: list[Any] = []

    def collect(worker: int) -> None:
        for batch in range(10):
            events = [
                {
                    "type": "view",
                    "item_id": f"{worker}-{batch}-{n}",
                    "category": ["shoes", "books"][n % 2],
                    "at": (now - timedelta(seconds=worker + n)).isoformat(),
                }
                for n in range(5)
            ]
            body = {"database": "shop_events", "events": events}
            status, answer = call(base, key, "POST", "/v1/subjects/racer/events", body)
            (accepted.extend(answer["accepted"]) if status == 200 else failures.append(answer))

    def decide() -> None:
        body = {"subject_id": "racer", "purpose": "recommendations", "candidates": CANDIDATES}
        for _ in range(20):
            status, answer = call(base, key, "POST", "/v1/personalize", body)
            if status != 200:
                failures.append(answer)

    threads = [threading.Thread(target=collect, args=(n,)) for n in range(8)]
    threads += [threading.Thread(target=decide) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert failures == []
    assert len(accepted) == 8 * 10 * 5
    assert_tallies_exact(app)
    with raw(app.config) as db:
        assert sum(n for n, _ in stored(db).values()) == 400


def keyring_pseudonym(app: Flask, subject: str) -> str:
    with app.app_context():
        return keyring().pseudonym(subject)


# --- sealed categories ---------------------------------------------------------------------------


@pytest.fixture
def pii_browsing(documents: tuple[Path, Path]) -> None:
    """Browsing events become PII: their item ids and categories are stored encrypted."""
    path = documents[0] / "categories.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["categories"]["browsing"]["pii"] = True
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


@pytest.mark.usefixtures("pii_browsing")
def test_sealed_categories_are_counted_without_being_stored_in_clear(
    app: Flask, shop: Caller
) -> None:
    now = datetime.now(UTC)
    body = {
        "database": "shop_events",
        "events": [
            {"type": "view", "item_id": f"i{n}", "category": "shoes", "at": now.isoformat()}
            for n in range(3)
        ],
    }
    for subject in ("ana", "bo"):
        assert (
            shop.put(f"/v1/subjects/{subject}/consents/recommendations", CONSENT).status_code == 200
        )
        assert shop.post(f"/v1/subjects/{subject}/events", body).status_code == 200
    with app.app_context(), database.connection_context():
        ana = find_subject(keyring().pseudonym("ana"))
        assert ana is not None
        # an event sealed before tallies, its category under a random nonce: still read
        legacy = encrypt_field(data_key(keyring(), ana), "books", "event:shop_events:view")
        with write_transaction():
            Event.create(
                subject=ana,
                database="shop_events",
                type="view",
                item_id=encrypt_field(data_key(keyring(), ana), "b", "event:shop_events:view"),
                item_category=legacy,
                sealed=True,
                at=now,
                received_at=now,
            )
    with raw(app.config) as db:
        rows = db.execute("SELECT subject_id, category, count, sealed FROM event_tally").fetchall()
    assert all(bool(row[3]) for row in rows)
    assert not any("shoes" in row[1] or "books" in row[1] for row in rows)
    # one subject's equal categories count as one tally; another subject's encrypt otherwise
    shoes = {row[0]: row[1] for row in rows if row[2] == 3}
    assert len(shoes) == 2 and len(set(shoes.values())) == 2
    assert_tallies_exact(app)

    body = {"subject_id": "ana", "purpose": "recommendations", "candidates": CANDIDATES}
    result = shop.post("/v1/personalize?explain=true", body).get_json()
    contributions = {i["id"]: i["contributions"] for i in result["items"]}
    assert contributions["s-1"] == {"affinity:shoes": 1.0}
    assert contributions["b-1"] == {"affinity:books": pytest.approx(1 / 3, abs=1e-5)}


# --- cost -------------------------------------------------------------------------------------


def test_a_long_history_is_read_as_a_bounded_number_of_rows(app: Flask, shop: Caller) -> None:
    """10,000 events over 60 days in 3 types and 3 categories: at most 3 * 3 * 61 tallies,
    whatever the count of events."""
    start = NOW - timedelta(days=60)
    events = [
        NewEvent(
            ["view", "click", "add_to_cart"][n % 3],
            f"i{n}",
            ["shoes", "books", "garden"][n % 7 % 3],
            start + n * timedelta(days=60) / 10_000,
            False,
        )
        for n in range(10_000)
    ]
    subject = subject_with(app, shop, events)
    with app.app_context(), database.connection_context():
        tallies = EventTally.select().count()
    assert tallies <= 3 * 3 * 61
    # the same answer as from every event one by one, within the scorer's documented bound
    result = assert_same_answer(app, shop, subject)
    assert {i["id"] for i in result["items"] if i["score"] > 0} == {"s-1", "b-1", "g-1"}
