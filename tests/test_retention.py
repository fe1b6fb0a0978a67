"""Retention purges: boundaries per category, consent expiry, reports, batches, the lease.

Data is collected through the API at pinned instants (time-machine), then the clock moves on
and a purge runs through `POST /v1/purges` or `gateway purge`; what is left is read from the
SQLite file. The demo registrations get a far review date in each test's copy of the documents,
so that data can be collected years after T0 as well.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
import yaml
from flask import Flask

from gateway import keyring
from gateway.api.problems import PROBLEM_MIME
from gateway.retention import LEASE, _Pace
from gateway.store.clients import authenticate
from gateway.store.db import database
from gateway.store.leases import acquire
from gateway.store.models import Attribute, AuditEntry, ConsentRecord, Event, Lease, PurgeRun
from gateway.store.subjects import find_subject
from tests.conftest import Caller, verify_audit

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
OLD, FRESH = "subject-old", "subject-fresh"
OTHER_HOST = "otherhost:1:abcd"
VALUES = {"favorite_brand": "Acme", "email": "ann@example.com", "home_city": "Haifa"}

Json = dict[str, Any]
Tally = dict[tuple[str, str], tuple[int, int]]  # (kind, category) -> (found, deleted)


@dataclass(frozen=True)
class Holding:
    """One kind of row a data category holds, with its retention as the demo documents say."""

    kind: str  # events or attributes
    category: str
    name: str  # event type or attribute name
    database: str
    retention: timedelta

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name


HOLDINGS = [
    Holding("events", "purchase_history", "purchase", "shop_events", timedelta(days=365)),
    Holding("events", "browsing", "view", "shop_events", timedelta(days=90)),
    Holding("events", "location", "store_visit", "mobile_location", timedelta(days=30)),
    Holding("attributes", "preferences", "favorite_brand", "crm", timedelta(days=730)),
    Holding("attributes", "contact", "email", "crm", timedelta(days=1095)),
    Holding("attributes", "location", "home_city", "mobile_location", timedelta(days=30)),
]
BY_NAME = {h.name: h for h in HOLDINGS}
TARGETS = [(h.kind, h.category) for h in HOLDINGS] + [
    ("consents", p) for p in ("recommendations", "email_marketing", "ads_personalization")
]


# -- documents and app -------------------------------------------------------------------------


def edit_document(path: Path, section: str, entry: str, **changes: Any) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document[section][entry].update(changes)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


@pytest.fixture
def app(make_app: Any, documents: tuple[Path, Path]) -> Flask:
    """The demo documents, with every registration valid until 2099."""
    for database_id in ("shop_events", "crm", "mobile_location"):
        edit_document(
            documents[1] / "databases.yaml", "databases", database_id, review_by=date(2099, 12, 31)
        )
    built: Flask = make_app()
    return built


def rebased(caller: Caller, app: Flask) -> Caller:
    """The same API client, speaking to another app built over the same instance."""
    return Caller(app.test_client(), caller.key)


# -- collection through the API ----------------------------------------------------------------


def ok(response: Any) -> Json:
    assert response.status_code == 200, response.get_json()
    body: Json = response.get_json()
    return body


def collect(caller: Caller, subject: str, holding: Holding, count: int = 1) -> None:
    """Store `count` events (at the current instant) or one attribute of `holding`."""
    path = f"/v1/subjects/{subject}/{holding.kind}"
    if holding.kind == "events":
        at = datetime.now(UTC).isoformat()
        events = [
            {"type": holding.name, "item_id": f"sku-{i}", "category": "shoes", "at": at}
            for i in range(count)
        ]
        result = ok(caller.post(path, {"database": holding.database, "events": events}))
        assert result == {"accepted": list(range(count)), "refused": {}}
    else:
        body = {"database": holding.database, "attributes": {holding.name: VALUES[holding.name]}}
        result = ok(caller.patch(path, body))
        assert result == {"accepted": [holding.name], "refused": {}}


def consent(caller: Caller, subject: str, purpose: str, granted: bool, **extra: Any) -> None:
    body = {"granted": granted, "source": "web-banner", "notice_version": "2025-05", **extra}
    ok(caller.put(f"/v1/subjects/{subject}/consents/{purpose}", body))


# -- what the database holds -------------------------------------------------------------------


def held(app: Flask, subject_id: str) -> Counter[tuple[str, str]]:
    """The subject's rows: ("events", type) and ("attributes", name), counted."""
    found: Counter[tuple[str, str]] = Counter()
    with app.app_context(), database.connection_context():
        subject = find_subject(keyring().pseudonym(subject_id))
        if subject is None:
            return found
        found.update(("events", e.type) for e in Event.select().where(Event.subject == subject))
        attributes = Attribute.select().where(Attribute.subject == subject)
        found.update(("attributes", a.name) for a in attributes)
    return found


def consent_rows(app: Flask, subjects: list[str]) -> set[tuple[str, str, bool]]:
    """(subject id, purpose, granted) of every stored consent record of `subjects`."""
    with app.app_context(), database.connection_context():
        names = {keyring().pseudonym(s): s for s in subjects}
        rows = ConsentRecord.select()
        return {(names[r.subject.pseudonym], r.purpose, r.granted) for r in rows}


def client_name(app: Flask, caller: Caller) -> str:
    with app.app_context(), database.connection_context():
        client = authenticate(caller.key)
        assert client is not None
        return str(client.name)


def audit_count(app: Flask) -> int:
    with app.app_context(), database.connection_context():
        return int(AuditEntry.select().count())


def stored(app: Flask, model: Any) -> list[Any]:
    with app.app_context(), database.connection_context():
        return list(model.select())


# -- purges ------------------------------------------------------------------------------------


def purge(caller: Caller, dry_run: bool = False) -> Json:
    return ok(caller.post("/v1/purges", {"dry_run": dry_run}))


def tally(report: Json) -> Tally:
    return {(c["kind"], c["category"]): (c["found"], c["deleted"]) for c in report["categories"]}


def expected(**rows: tuple[int, int]) -> Tally:
    """Every target at (0, 0) but those named `kind__category`."""
    found = {target: (0, 0) for target in TARGETS}
    for name, value in rows.items():
        kind, _, category = name.partition("__")
        found[(kind, category)] = value
    return found


def purge_entries(app: Flask) -> list[AuditEntry]:
    with app.app_context(), database.connection_context():
        query = AuditEntry.select().where(AuditEntry.action == "purge")
        return list(query.order_by(AuditEntry.seq))


# -- retention boundaries ----------------------------------------------------------------------

BOUNDARY = {
    "one_second_before": (-SECOND, True),
    "at": (timedelta(0), False),
    "one_second_after": (SECOND, False),
}


@pytest.mark.parametrize("holding", HOLDINGS, ids=[f"{h.category}-{h.kind}" for h in HOLDINGS])
@pytest.mark.parametrize(("offset", "kept"), list(BOUNDARY.values()), ids=list(BOUNDARY))
def test_a_row_goes_exactly_at_its_category_retention(
    app: Flask, admin: Caller, holding: Holding, offset: timedelta, kept: bool
) -> None:
    purge_at = T0 + holding.retention + offset
    # an admin writes every category, whichever purpose uses it
    with time_machine.travel(T0, tick=False):
        collect(admin, OLD, holding)
    with time_machine.travel(purge_at - DAY, tick=False):
        for each in HOLDINGS:  # a day old: every category, the one under test too
            collect(admin, FRESH, each)
    with time_machine.travel(purge_at, tick=False):
        report = purge(admin)
    assert held(app, OLD) == (Counter({holding.key: 1}) if kept else Counter())
    assert held(app, FRESH) == Counter(h.key for h in HOLDINGS)
    gone = {} if kept else {f"{holding.kind}__{holding.category}": (1, 1)}
    assert tally(report) == expected(**gone)


# -- consent records ---------------------------------------------------------------------------

MAX_AGE_13M = datetime(2026, 7, 2, 9, 0, tzinfo=UTC)  # T0 + P13M (recommendations)
MAX_AGE_6M = datetime(2025, 12, 2, 9, 0, tzinfo=UTC)  # T0 + P6M (ads_personalization)
CONSENT_SUBJECTS = ["c-max-age", "c-expires", "c-withdrawn", "c-ads", "c-mail"]
ALL_CONSENTS = {
    ("c-max-age", "recommendations", True),
    ("c-expires", "recommendations", True),
    ("c-withdrawn", "recommendations", True),
    ("c-withdrawn", "recommendations", False),
    ("c-ads", "ads_personalization", True),
    ("c-mail", "email_marketing", True),
}
EXPIRES = ("c-expires", "recommendations", True)
ADS = ("c-ads", "ads_personalization", True)
MAX_AGED = {("c-max-age", "recommendations", True), ("c-withdrawn", "recommendations", True)}

CONSENT_CASES = {
    # history retention, purge time, records deleted
    "before_expires_at": (None, T0 + 30 * DAY - SECOND, set()),
    "at_expires_at": (None, T0 + 30 * DAY, {EXPIRES}),
    "before_6_months": (None, MAX_AGE_6M - SECOND, {EXPIRES}),
    "at_6_months": (None, MAX_AGE_6M, {EXPIRES, ADS}),
    "before_13_months": (None, MAX_AGE_13M - SECOND, {EXPIRES, ADS}),
    "at_13_months": (None, MAX_AGE_13M, {EXPIRES, ADS, *MAX_AGED}),
    "ten_years_on": (None, T0 + 3650 * DAY, {EXPIRES, ADS, *MAX_AGED}),
    "kept_30_days_past_expires_at": ("P30D", T0 + 60 * DAY - SECOND, set()),
    "gone_30_days_past_expires_at": ("P30D", T0 + 60 * DAY, {EXPIRES}),
    "kept_at_13_months": ("P30D", MAX_AGE_13M, {EXPIRES, ADS}),
    "kept_30_days_past_13_months": ("P30D", MAX_AGE_13M + 30 * DAY - SECOND, {EXPIRES, ADS}),
    "gone_30_days_past_13_months": ("P30D", MAX_AGE_13M + 30 * DAY, {EXPIRES, ADS, *MAX_AGED}),
}


@pytest.mark.parametrize(
    ("history", "purge_at", "deleted"), list(CONSENT_CASES.values()), ids=list(CONSENT_CASES)
)
def test_ended_consent_grants_go_and_withdrawals_stay(
    app: Flask,
    make_app: Any,
    documents: tuple[Path, Path],
    shop: Caller,
    mailer: Caller,
    admin: Caller,
    history: str | None,
    purge_at: datetime,
    deleted: set[tuple[str, str, bool]],
) -> None:
    if history is not None:
        purposes = documents[0] / "purposes.yaml"
        edit_document(purposes, "purposes", "recommendations", consent_history_retention=history)
        app = make_app()
        shop, mailer, admin = (rebased(c, app) for c in (shop, mailer, admin))
    with time_machine.travel(T0, tick=False):
        consent(shop, "c-max-age", "recommendations", True)
        consent(shop, "c-expires", "recommendations", True, expires_at=(T0 + 30 * DAY).isoformat())
        consent(shop, "c-withdrawn", "recommendations", True)
        consent(shop, "c-ads", "ads_personalization", True)
        consent(mailer, "c-mail", "email_marketing", True)
    with time_machine.travel(T0 + timedelta(minutes=1), tick=False):
        consent(shop, "c-withdrawn", "recommendations", False)
    assert consent_rows(app, CONSENT_SUBJECTS) == ALL_CONSENTS
    with time_machine.travel(purge_at, tick=False):
        report = purge(admin)
    assert consent_rows(app, CONSENT_SUBJECTS) == ALL_CONSENTS - deleted
    per_purpose = Counter(f"consents__{purpose}" for _, purpose, _ in deleted)
    assert tally(report) == expected(**{k: (n, n) for k, n in per_purpose.items()})


GRANT, WITHDRAW = True, False
ENDED_HISTORIES = {
    # the changes, each (days after T0, granted, expires_at in days after T0), purged at T0 + 31
    # days; then whether the subject's consent counts, and the changes left
    "short_grant_after_an_open_one": ([(0, GRANT, None), (1, GRANT, 30)], False, []),
    "short_grant_after_a_withdrawal": (
        [(0, GRANT, None), (0.5, WITHDRAW, None), (1, GRANT, 30)],
        False,
        [(0.5, WITHDRAW)],
    ),
    "short_grant_alone": ([(1, GRANT, 30)], False, []),
    "open_grant_after_a_short_one": ([(0, GRANT, 30), (1, GRANT, None)], True, [(1, GRANT)]),
}


@pytest.mark.parametrize(
    ("changes", "lawful", "left"), list(ENDED_HISTORIES.values()), ids=list(ENDED_HISTORIES)
)
def test_purging_an_ended_grant_never_revives_an_older_one(
    app: Flask,
    shop: Caller,
    admin: Caller,
    changes: list[tuple[float, bool, int | None]],
    lawful: bool,
    left: list[tuple[float, bool]],
) -> None:
    for days, granted, expires in changes:
        with time_machine.travel(T0 + days * DAY, tick=False):
            extra = {} if expires is None else {"expires_at": (T0 + expires * DAY).isoformat()}
            consent(shop, OLD, "recommendations", granted, **extra)
    path = f"/v1/subjects/{OLD}/consents/recommendations"
    with time_machine.travel(T0 + 31 * DAY, tick=False):
        before = ok(shop.get(path))
        report = purge(admin)
        after = ok(shop.get(path))
    assert (before["lawful"], after["lawful"]) == (lawful, lawful), after
    history = [(r["recorded_at"], r["granted"]) for r in after["history"]]
    assert history == [((T0 + days * DAY).isoformat(), granted) for days, granted in left[::-1]]
    gone = len(changes) - len(left)
    assert tally(report) == expected(consents__recommendations=(gone, gone))


# -- reports, dry runs, history, audit ---------------------------------------------------------

PURGE_AT = T0 + 400 * DAY
DELETED = {"events:browsing": 3, "events:purchase_history": 2, "consents:recommendations": 1}
DELETED_TALLY = expected(
    events__browsing=(3, 3), events__purchase_history=(2, 2), consents__recommendations=(1, 1)
)
FOUND_TALLY = {target: (found, 0) for target, (found, _) in DELETED_TALLY.items()}


def seed_expired(shop: Caller) -> None:
    """At PURGE_AT: 3 views, 2 purchases and a grant expired; a preference and a fresh view kept."""
    with time_machine.travel(T0, tick=False):
        collect(shop, OLD, BY_NAME["view"], count=3)
        collect(shop, OLD, BY_NAME["purchase"], count=2)
        collect(shop, OLD, BY_NAME["favorite_brand"])
        consent(shop, OLD, "recommendations", True, expires_at=(T0 + DAY).isoformat())
    with time_machine.travel(PURGE_AT - DAY, tick=False):
        collect(shop, FRESH, BY_NAME["view"])


KEPT = Counter({("attributes", "favorite_brand"): 1})
SEEDED = KEPT + Counter({("events", "view"): 3, ("events", "purchase"): 2})


def test_dry_runs_delete_nothing_and_report_what_a_run_would(
    app: Flask, runner: Any, shop: Caller, admin: Caller
) -> None:
    seed_expired(shop)
    with time_machine.travel(PURGE_AT, tick=False):
        result = runner.invoke(args=["purge", "--dry-run"])
        assert result.exit_code == 0, result.output
        assert held(app, OLD) == SEEDED
        report = purge(admin, dry_run=True)
    assert re.search(r"events\s+browsing\s+found\s+3\s+would delete\s+3\s", result.output)
    assert re.search(r"consents\s+recommendations\s+found\s+1\s+would delete\s+1\s", result.output)
    assert "total would delete: 6" in result.output
    assert (report["dry_run"], report["status"]) == (True, "finished")
    assert tally(report) == FOUND_TALLY
    assert held(app, OLD) == SEEDED
    assert consent_rows(app, [OLD]) == {(OLD, "recommendations", True)}
    entries = purge_entries(app)
    assert [e.outcome for e in entries] == ["dry_run", "dry_run"]
    assert [e.actor for e in entries] == [f"cli:{getpass.getuser()}", client_name(app, admin)]
    found = {"events:browsing": 3, "events:purchase_history": 2, "consents:recommendations": 1}
    for entry in entries:
        assert json.loads(entry.fields)["found"] == found
        assert json.loads(entry.fields)["deleted"] == {}
    assert verify_audit(app).ok


def test_a_run_deletes_what_it_found_stores_its_report_and_audits_once(
    app: Flask, shop: Caller, admin: Caller, auditor: Caller
) -> None:
    seed_expired(shop)
    before = audit_count(app)
    with time_machine.travel(PURGE_AT, tick=False):
        report = purge(admin)
    assert audit_count(app) == before + 1
    assert (report["dry_run"], report["status"]) == (False, "finished")
    assert report["policy_hash"] == app.extensions["gateway.policies"].hash
    assert report["started_at"] == PURGE_AT.isoformat()
    assert tally(report) == DELETED_TALLY
    assert all(c["seconds"] >= 0 for c in report["categories"])
    assert held(app, OLD) == KEPT
    assert held(app, FRESH) == Counter({("events", "view"): 1})
    assert consent_rows(app, [OLD]) == set()
    (entry,) = purge_entries(app)
    fields = json.loads(entry.fields)
    assert (entry.outcome, entry.actor, entry.subject) == (
        "finished",
        client_name(app, admin),
        None,
    )
    assert (fields["run"], fields["deleted"], fields["found"]) == (report["id"], DELETED, DELETED)
    for reader in (auditor, admin):
        (listed,) = ok(reader.get("/v1/purges"))["runs"]
        assert listed == report
    assert verify_audit(app).ok


def test_runs_are_listed_newest_first_to_auditors_and_admins_only(
    app: Flask, shop: Caller, admin: Caller, auditor: Caller
) -> None:
    seed_expired(shop)
    with time_machine.travel(PURGE_AT, tick=False):
        reports = [purge(admin, dry_run=True), purge(admin), purge(admin)]
    newest_first = reports[::-1]
    for reader in (auditor, admin):
        runs = ok(reader.get("/v1/purges"))["runs"]
        assert runs == newest_first
        assert [r["id"] for r in runs] == sorted((r["id"] for r in runs), reverse=True)
        assert [tally(r) for r in runs] == [expected(), DELETED_TALLY, FOUND_TALLY]
        assert [r["dry_run"] for r in runs] == [False, False, True]
        assert ok(reader.get("/v1/purges?limit=1"))["runs"] == newest_first[:1]
    refused = [
        shop.get("/v1/purges"),
        shop.post("/v1/purges", {"dry_run": True}),
        auditor.post("/v1/purges", {"dry_run": True}),
    ]
    for response in refused:
        assert response.status_code == 403
        assert response.mimetype == PROBLEM_MIME
        assert response.get_json()["code"] == "forbidden"
    assert len(stored(app, PurgeRun)) == 3


def test_a_rerun_finds_nothing_left(app: Flask, shop: Caller, admin: Caller) -> None:
    seed_expired(shop)
    with time_machine.travel(PURGE_AT, tick=False):
        first, second = purge(admin), purge(admin)
    assert tally(first) == DELETED_TALLY
    assert tally(second) == expected()
    assert held(app, OLD) == KEPT
    assert held(app, FRESH) == Counter({("events", "view"): 1})
    entries = purge_entries(app)
    assert [json.loads(e.fields)["deleted"] for e in entries] == [DELETED, {}]
    assert [e.outcome for e in entries] == ["finished", "finished"]
    assert verify_audit(app).ok


def test_the_audit_summary_counts_purge_runs_and_deleted_rows(
    app: Flask, runner: Any, shop: Caller, admin: Caller, auditor: Caller
) -> None:
    seed_expired(shop)
    with time_machine.travel(PURGE_AT, tick=False):
        assert runner.invoke(args=["purge", "--dry-run"]).exit_code == 0
        purge(admin)
        assert runner.invoke(args=["purge"]).exit_code == 0
    summary = ok(auditor.get("/v1/audit/summary"))
    assert summary["purges"] == {"runs": 2, "dry_runs": 1, "deleted": DELETED}
    assert summary["actions"]["purge"] == 3


# -- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "batches"), [(7, 8), (1, 50), (49, 2), (50, 1), (1000, 1)])
def test_a_purge_deletes_in_batches_of_the_configured_size(
    make_app: Any,
    shop: Caller,
    admin: Caller,
    caplog: pytest.LogCaptureFixture,
    batch_size: int,
    batches: int,
) -> None:
    with time_machine.travel(T0, tick=False):
        collect(shop, OLD, BY_NAME["view"], count=50)
        collect(shop, OLD, BY_NAME["purchase"], count=4)
    with time_machine.travel(T0 + 99 * DAY, tick=False):
        collect(shop, FRESH, BY_NAME["view"], count=3)
    app = make_app(PURGE_BATCH_SIZE=batch_size)
    caplog.set_level(logging.DEBUG, logger="peewee")
    with time_machine.travel(T0 + 100 * DAY, tick=False):
        report = purge(rebased(admin, app))
    queries = [r.msg[0] for r in caplog.records if isinstance(r.msg, tuple)]
    deletes = [sql for sql in queries if sql.startswith("DELETE")]
    # the lease's release, and on PostgreSQL the sequencer taking chained audit entries out of
    # the pending table, are not purge batches
    others = ('DELETE FROM "lease"', 'DELETE FROM "audit_pending"')
    tables = [sql.split()[2] for sql in deletes if not sql.startswith(others)]
    assert tables == ['"event"'] * batches
    assert tally(report) == expected(events__browsing=(50, 50))
    assert held(app, OLD) == Counter({("events", "purchase"): 4})
    assert held(app, FRESH) == Counter({("events", "view"): 3})


def test_a_batch_deletes_as_many_rows_as_fit_in_its_time() -> None:
    pace = _Pace(most=10_000, seconds=0.008)
    assert pace.rows == 1000  # until the cost of a row is known
    pace.record(1000, 0.002)  # 2 us a row: 4,000 would fit, but a batch at most doubles
    assert pace.rows == 2000
    pace.record(2000, 0.004)
    assert pace.rows == 4000
    pace.record(4000, 2.0)  # one stalled batch: the median of the last three holds
    assert pace.rows == 4000
    pace.record(4000, 0.32)  # rows now cost 80 us (a trigger, a cold cache): 100 fit
    assert pace.rows == 100
    assert _Pace(most=500, seconds=60).rows == 500


# -- policy changes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["view", "favorite_brand"])
def test_a_shortened_retention_takes_effect_at_the_next_purge(
    app: Flask, make_app: Any, documents: tuple[Path, Path], shop: Caller, admin: Caller, name: str
) -> None:
    holding = BY_NAME[name]
    with time_machine.travel(T0, tick=False):
        collect(shop, OLD, holding, count=1)
    with time_machine.travel(T0 + 60 * DAY, tick=False):
        assert tally(purge(admin)) == expected()
        assert held(app, OLD) == Counter({holding.key: 1})
        edit_document(
            documents[0] / "categories.yaml", "categories", holding.category, retention="P30D"
        )
        changed = make_app()
        report = purge(rebased(admin, changed))
    assert tally(report) == expected(**{f"{holding.kind}__{holding.category}": (1, 1)})
    assert held(changed, OLD) == Counter()
    new_hash = changed.extensions["gateway.policies"].hash
    assert report["policy_hash"] == new_hash != app.extensions["gateway.policies"].hash


# -- the lease ---------------------------------------------------------------------------------


def finished_pid() -> int:
    """The pid of a process of this host that has already exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


def take_lease(app: Flask, kind: str) -> str:
    """Have another purger hold the lease: alive, expired, or a dead process on this host."""
    now = datetime.now(UTC)
    holder = {
        "live": OTHER_HOST,
        "expired": OTHER_HOST,
        "dead_local_process": f"{socket.gethostname()}:{finished_pid()}:x",
    }[kind]
    since = now - timedelta(hours=1) if kind == "expired" else now
    with app.app_context(), database.connection_context():
        assert acquire(LEASE, holder, ttl=timedelta(minutes=10), now=since)
    return holder


def run_purge(how: str, admin: Caller, runner: Any) -> tuple[bool, str]:
    """Run a purge through the API or the CLI; (ran, what it answered)."""
    if how == "cli":
        result = runner.invoke(args=["purge"])
        assert result.exit_code == 0, result.output
        return "skipped" not in result.output, str(result.output)
    response = admin.post("/v1/purges", {"dry_run": False})
    if response.status_code == 409:
        assert response.mimetype == PROBLEM_MIME
        assert response.get_json()["code"] == "purge_running"
        return False, str(response.get_json())
    return ok(response)["status"] == "finished", str(response.get_json())


@pytest.mark.parametrize("how", ["api", "cli"])
def test_a_live_lease_holder_keeps_every_other_purge_out(
    app: Flask, runner: Any, shop: Caller, admin: Caller, how: str
) -> None:
    seed_expired(shop)
    with time_machine.travel(PURGE_AT, tick=False):
        take_lease(app, "live")
        ran, answer = run_purge(how, admin, runner)
    assert not ran, answer
    if how == "cli":
        assert answer.startswith(f"skipped: another purge is running ({OTHER_HOST})")
    assert held(app, OLD) == SEEDED
    assert stored(app, PurgeRun) == []
    assert purge_entries(app) == []
    assert [(lease.name, lease.holder) for lease in stored(app, Lease)] == [(LEASE, OTHER_HOST)]


@pytest.mark.parametrize("how", ["api", "cli"])
@pytest.mark.parametrize("kind", ["expired", "dead_local_process"])
def test_an_expired_or_abandoned_lease_is_taken_over(
    app: Flask, runner: Any, shop: Caller, admin: Caller, how: str, kind: str
) -> None:
    seed_expired(shop)
    with time_machine.travel(PURGE_AT, tick=False):
        holder = take_lease(app, kind)
        ran, answer = run_purge(how, admin, runner)
    assert ran, answer
    assert held(app, OLD) == KEPT
    (run,) = stored(app, PurgeRun)
    assert run.status == "finished"
    assert run.holder != holder
    assert stored(app, Lease) == []  # released when done
    assert json.loads(purge_entries(app)[0].fields)["deleted"] == DELETED


# -- bad input ---------------------------------------------------------------------------------

BAD_BODIES = {
    "string_flag": ({"dry_run": "yes"}, "dry_run"),
    "number_flag": ({"dry_run": 1}, "dry_run"),
    "null_flag": ({"dry_run": None}, "dry_run"),
    "unknown_field": ({"dry_run": True, "force": True}, "force"),
}


@pytest.mark.parametrize(("body", "field"), list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_a_bad_purge_request_is_refused_naming_the_field(
    app: Flask, admin: Caller, body: Json, field: str
) -> None:
    response = admin.post("/v1/purges", body)
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == PROBLEM_MIME
    assert list(response.get_json()["errors"]) == [field]
    assert stored(app, PurgeRun) == []
    assert stored(app, Lease) == []


@pytest.mark.parametrize(
    ("query", "field"), [("limit=0", "limit"), ("limit=501", "limit"), ("status=running", "status")]
)
def test_a_bad_history_query_is_refused_naming_the_field(
    app: Flask, auditor: Caller, query: str, field: str
) -> None:
    response = auditor.get(f"/v1/purges?{query}")
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == PROBLEM_MIME
    assert list(response.get_json()["errors"]) == [field]
