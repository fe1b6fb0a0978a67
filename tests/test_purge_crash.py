"""Crash safety: `gateway purge` killed with SIGKILL mid-way loses nothing it should keep.

A real instance on disk holds tens of thousands of expired browsing events among fresh events and
attributes. The purge runs as a real `gateway purge` process in batches of 500; once the event
count shows at least one committed batch, the process is killed. The database must then be intact
(SQLite's integrity_check; on PostgreSQL amcheck over every table and index, every row read in
full), hold every fresh row, have lost only whole batches of expired rows, and keep a verifiable
audit chain; the next `gateway purge` takes the dead process's lease over at once and finishes the
job.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from flask import Flask
from peewee import chunked

from gateway import keyring
from gateway.audit.chain import entry_body
from gateway.policy.engine import ConsentEvent, ConsentStatus, consent_status
from gateway.store.db import database, write_transaction
from gateway.store.models import AuditEntry, ConsentRecord, Lease, PurgeRun, Subject
from gateway.store.profiles import put_attributes
from gateway.store.subjects import ensure_subject
from tests.conftest import GATEWAY, gateway_environment, verify_audit
from tests.stores import count_rows, insert_events, raw
from tests.test_purge_consents import changed_meaning

EXPIRED = 60_000  # browsing events 200 days old (retention P90D)
FRESH = 2_000  # events within their retention, browsing ones among them
SUBJECTS = 100
BATCH = 500
BROWSING = ("view", "click", "add_to_cart")
FRESH_KINDS = (  # event type, age
    ("view", timedelta(days=1)),
    ("click", timedelta(days=89)),
    ("purchase", timedelta(days=300)),
    ("store_visit", timedelta(days=2)),
)
DEADLINE = 60.0  # seconds for any one wait on the purge process

Row = tuple[Any, ...]


def seed(app: Flask) -> None:
    """Subjects with fresh attributes, and expired and fresh events shuffled together."""
    now = datetime.now(UTC)
    rng = random.Random(4)
    with app.app_context(), database.connection_context(), write_transaction():
        ring = keyring()
        subjects = [
            ensure_subject(ring, ring.pseudonym(f"subject-{i}"), now) for i in range(SUBJECTS)
        ]
        for i, subject in enumerate(subjects):
            values = {"favorite_brand": ("Acme", False), "email": (f"s{i}@example.com", True)}
            put_attributes(subject, "crm", values, ring, now)
        rows = [
            event(rng.choice(subjects), rng.choice(BROWSING), f"expired-{i}", now - timedelta(200))
            for i in range(EXPIRED)
        ]
        for i in range(FRESH):
            kind, age = FRESH_KINDS[i % len(FRESH_KINDS)]
            rows.append(event(rng.choice(subjects), kind, f"fresh-{i}", now - age))
        rng.shuffle(rows)
        insert_events(rows)


def event(subject: Subject, kind: str, item_id: str, at: datetime) -> Row:
    database_id = "mobile_location" if kind == "store_visit" else "shop_events"
    return (subject.get_id(), database_id, kind, item_id, "shoes", False, at, at)


def expired_left(app: Flask) -> int:
    return count_rows(app.config, "SELECT count(*) FROM event WHERE item_id LIKE ?", ["expired-%"])


def kept_rows(app: Flask) -> dict[str, list[Row]]:
    """Every row that no purge may touch, in full."""
    queries: dict[str, tuple[str, list[str]]] = {
        "events": ("SELECT * FROM event WHERE item_id LIKE ? ORDER BY id", ["fresh-%"]),
        "attributes": ("SELECT * FROM attribute ORDER BY id", []),
        "subjects": ("SELECT * FROM subject ORDER BY id", []),
    }
    with raw(app.config) as db:
        return {
            name: [tuple(row) for row in db.execute(sql, params).fetchall()]
            for name, (sql, params) in queries.items()
        }


def integrity(app: Flask) -> list[str]:
    """What the database's own checks find damaged: nothing, or the problems.

    SQLite: PRAGMA integrity_check. PostgreSQL: amcheck's verify_heapam over every table (and its
    TOAST), bt_index_check over every index with every heap row looked up in it (it raises on a
    damaged index), and every row of every table read in full.
    """
    with raw(app.config) as db:
        if not db.postgres:
            found = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
            return [] if found == ["ok"] else found
        # The extension lives in a schema of its own, created once per database.
        db.execute("SELECT pg_advisory_xact_lock(hashtext('amcheck'))")
        db.execute("CREATE SCHEMA IF NOT EXISTS amcheck")
        db.execute("CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA amcheck")
        tables = db.tables()
        assert {"event", "attribute", "subject", "audit_entry", "purge_run"} <= set(tables)
        problems = []
        for table in tables:
            damaged = db.execute(
                "SELECT blkno, offnum, attnum, msg FROM amcheck.verify_heapam(?::regclass, "
                "check_toast => true)",
                [table],
            ).fetchall()
            problems += [f"{table}: {tuple(row)}" for row in damaged]
            db.execute(f"SELECT * FROM {table}").fetchall()
        indexes = db.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
            " WHERE c.relnamespace = current_schema()::regnamespace AND a.amname = 'btree'"
        ).fetchall()
        assert len(indexes) >= len(tables)
        for (index,) in indexes:
            db.execute("SELECT amcheck.bt_index_check(?::regclass, true)", [index])
        return problems


def writers_settled(app: Flask) -> None:
    """Wait until the killed process's last write transaction has ended. On PostgreSQL the server,
    not the dead client, ends it (commit or rollback) once it sees the connection gone; our own
    write transaction can begin only then, as it takes the same writers' lock."""
    with app.app_context(), database.connection_context(), write_transaction():
        pass


def environment(app: Flask, batch: int = BATCH) -> dict[str, str]:
    """Settings for `gateway purge`: the app's files, batches of 500, a long lease."""
    # Only the dead-holder check can free the killed run's lease within this test. Batches of
    # exactly `batch` rows, however slow the machine: no time limit cuts one short.
    return gateway_environment(
        app, PURGE_BATCH_SIZE=str(batch), PURGE_BATCH_SECONDS="60", PURGE_LEASE_SECONDS="3600"
    )


def kill_mid_way(
    app: Flask, at_least: int, table: str = "event", batch: int = BATCH
) -> subprocess.Popen[bytes]:
    """Start `gateway purge`; SIGKILL it once `at_least` rows of `table` are gone."""
    with raw(app.config) as db:
        (total,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    process = subprocess.Popen(
        [str(GATEWAY), "purge"],
        env=environment(app, batch),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + DEADLINE
    try:
        with raw(app.config) as db:
            while True:
                (left,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
                if total - left >= at_least:
                    break
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the purge deleted nothing in time"
                time.sleep(0.001)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE)
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
    writers_settled(app)
    return process


def runs(app: Flask) -> list[PurgeRun]:
    with app.app_context(), database.connection_context():
        return list(PurgeRun.select().order_by(PurgeRun.id))


def leases(app: Flask) -> list[tuple[str, str]]:
    with app.app_context(), database.connection_context():
        return [(lease.name, lease.holder) for lease in Lease.select()]


def audit_entries(app: Flask) -> list[dict[str, Any]]:
    with app.app_context(), database.connection_context():
        return [entry_body(e) for e in AuditEntry.select().order_by(AuditEntry.seq)]


@pytest.mark.parametrize("kill_after", [BATCH, EXPIRED // 2], ids=["first_batch", "half_way"])
def test_a_purge_killed_mid_way_keeps_the_database_consistent_and_the_next_run_finishes(
    make_app: Any, kill_after: int
) -> None:
    app = make_app()
    seed(app)
    kept = kept_rows(app)
    assert [len(kept[name]) for name in ("events", "attributes")] == [FRESH, 2 * SUBJECTS]
    chain_before = audit_entries(app)

    killed = kill_mid_way(app, at_least=kill_after)

    assert killed.returncode == -signal.SIGKILL
    assert integrity(app) == []
    assert kept_rows(app) == kept
    deleted = EXPIRED - expired_left(app)
    assert kill_after <= deleted < EXPIRED, "the purge finished before it was killed"
    assert deleted % BATCH == 0
    assert verify_audit(app).ok
    assert audit_entries(app) == chain_before
    (cut_off,) = runs(app)
    holder = f"{socket.gethostname()}:{killed.pid}:"
    assert (cut_off.status, cut_off.holder.startswith(holder)) == ("running", True)
    assert leases(app) == [("retention-purge", cut_off.holder)]

    rerun = subprocess.run(
        [str(GATEWAY), "purge"],
        env=environment(app),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )

    assert rerun.returncode == 0, rerun.stderr
    left = EXPIRED - deleted
    assert rerun.stdout.splitlines()[-1] == f"total deleted: {left}", rerun.stdout
    assert expired_left(app) == 0
    assert kept_rows(app) == kept
    assert integrity(app) == []
    assert [(run.id, run.status) for run in runs(app)] == [
        (cut_off.id, "interrupted"),
        (cut_off.id + 1, "finished"),
    ]
    report = {(r["kind"], r["category"]): r for r in json.loads(runs(app)[1].report)}
    assert (report["events", "browsing"]["found"], report["events", "browsing"]["deleted"]) == (
        left,
        left,
    )
    assert sum(r["deleted"] for r in report.values()) == left
    assert leases(app) == []
    entries = audit_entries(app)
    assert entries[: len(chain_before)] == chain_before
    interrupted, entry = entries[len(chain_before) :]
    # the killed run's own batches recorded their progress, so its deletions are audited too
    assert (interrupted["action"], interrupted["outcome"]) == ("purge", "interrupted")
    assert interrupted["fields"] == {"run": cut_off.id, "deleted": {"events:browsing": deleted}}
    assert (entry["action"], entry["outcome"]) == ("purge", "finished")
    assert (entry["fields"]["run"], entry["fields"]["deleted"]) == (
        cut_off.id + 1,
        {"events:browsing": left},
    )
    assert verify_audit(app).ok


# -- consent records ---------------------------------------------------------------------------

CONSENT_SUBJECTS = 2_500
CONSENT_BATCH = 25
REC, ADS, MAIL = "recommendations", "ads_personalization", "email_marketing"
# Per pattern, one subject's changes in the order they are stored (so ids run against time
# where a newer record comes first): (purpose, granted, days ago, expires so many days ago).
CONSENT_PATTERNS = [
    # an ended grant stored before the open one it supersedes: expired, both go
    [(REC, True, 100, 10), (REC, True, 200, None)],
    # an ended grant before an open one: granted, the ended one goes
    [(REC, True, 20, None), (REC, True, 30, 1)],
    # open grant, withdrawal, ended grant, stored backwards: expired, then withdrawn
    [(REC, True, 50, 5), (REC, False, 60, None), (REC, True, 70, None)],
    # legitimate interest: an expired grant after an objection stays, lawful
    [(MAIL, True, 50, 5), (MAIL, False, 60, None)],
    # a grant ended by its own date stored before one past consent_max_age (P6M)
    [(ADS, True, 100, 3), (ADS, True, 400, None)],
]
CONSENTS_LEFT = 0 + 1 + 1 + 2 + 0  # records a finished purge leaves, per five subjects


def seed_consents(app: Flask) -> None:
    """Subjects (no data keys: no purge needs them) with the patterns' consent records, each
    subject's first change stored before any subject's second, so ids run against time."""
    now = datetime.now(UTC)
    with app.app_context(), database.connection_context(), write_transaction():
        names = [
            {"pseudonym": f"consenting-{i}", "created_at": now} for i in range(CONSENT_SUBJECTS)
        ]
        Subject.insert_many(names).execute()
        subjects = list(Subject.select().where(Subject.pseudonym.startswith("consenting-")))
        rows: list[dict[str, Any]] = []
        for position in range(3):
            for subject in subjects:
                pattern = CONSENT_PATTERNS[subject.get_id() % len(CONSENT_PATTERNS)]
                if position < len(pattern):
                    rows.append(consent_row(subject, len(rows), pattern[position], now))
        for chunk in chunked(rows, 1000):  # PostgreSQL takes at most 65535 parameters
            ConsentRecord.insert_many(chunk).execute()


def consent_row(
    subject: Subject, number: int, change: tuple[str, bool, int, int | None], now: datetime
) -> dict[str, Any]:
    """One change of a pattern as a consent_record row."""
    purpose, granted, days_ago, expired_days_ago = change
    expires = None if expired_days_ago is None else now - timedelta(days=expired_days_ago)
    return {
        "subject": subject,
        "receipt_id": f"receipt-{number}",
        "purpose": purpose,
        "granted": granted,
        "source": "test",
        "notice_version": "2025-05",
        "recorded_at": now - timedelta(days=days_ago),
        "expires_at": expires,
        "client": "test",
        "policy_hash": "test",
        "signature": "unsigned",
    }


def consent_meanings(app: Flask, at: datetime) -> dict[tuple[int, str], ConsentStatus]:
    """Every consenting subject's status for every purpose at `at`, as the engine reads it."""
    with app.app_context(), database.connection_context():
        purposes = app.extensions["gateway.policies"].purposes
        histories: dict[tuple[int, str], list[ConsentEvent]] = defaultdict(list)
        query = ConsentRecord.select().order_by(
            ConsentRecord.recorded_at, ConsentRecord._meta.primary_key
        )
        rows: list[dict[str, Any]] = list(cast(Any, query).dicts())
        for row in rows:
            change = ConsentEvent(
                row["purpose"], row["granted"], row["recorded_at"], row["expires_at"]
            )
            histories[row["subject"], row["purpose"]].append(change)
        subjects = Subject.select().where(Subject.pseudonym.startswith("consenting-"))
        return {
            (s.get_id(), p.id): consent_status(p, histories[s.get_id(), p.id], at)
            for s in subjects
            for p in purposes.values()
        }


def test_a_consent_purge_killed_mid_way_never_makes_an_expired_consent_count_again(
    make_app: Any,
) -> None:
    app = make_app()
    seed_consents(app)
    stored = count_rows(app.config, "SELECT count(*) FROM consent_record")
    at = datetime.now(UTC) + timedelta(minutes=5)  # past the purge's own `now`
    before = consent_meanings(app, at)

    killed = kill_mid_way(app, at_least=CONSENT_BATCH, table="consent_record", batch=CONSENT_BATCH)

    assert killed.returncode == -signal.SIGKILL
    assert integrity(app) == []
    left = count_rows(app.config, "SELECT count(*) FROM consent_record")
    expected_left = CONSENTS_LEFT * CONSENT_SUBJECTS // len(CONSENT_PATTERNS)
    assert expected_left < left <= stored - CONSENT_BATCH, "the purge finished before the kill"
    assert changed_meaning(before, consent_meanings(app, at)) == {}
    assert verify_audit(app).ok

    rerun = subprocess.run(
        [str(GATEWAY), "purge"],
        env=environment(app, CONSENT_BATCH),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )

    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[-1] == f"total deleted: {left - expected_left}", rerun.stdout
    assert count_rows(app.config, "SELECT count(*) FROM consent_record") == expected_left
    assert changed_meaning(before, consent_meanings(app, at)) == {}
    assert [run.status for run in runs(app)] == ["interrupted", "finished"]
    assert verify_audit(app).ok
