"""Schema step 9: a grant's expiry notice, once queued with the grant and due when it lapsed,
becomes a mark on the grant that the scheduler finds; a version 8 database is converted in
place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask

from gateway import keyring
from gateway.store.db import database
from gateway.store.migrations import LATEST, current_version, upgrade
from tests.conftest import Caller
from tests.store.test_migrations import introspect
from tests.stores import raw

CONSENT = {"source": "web_banner", "notice_version": "2026-01"}


def put(caller: Caller, subject: str, granted: bool, expires_at: datetime | None = None) -> None:
    body: dict[str, Any] = {"granted": granted, **CONSENT}
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    response = caller.put(f"/v1/subjects/{subject}/consents/recommendations", body)
    assert response.status_code == 200, response.get_json()


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def as_version_8(app: Flask, notices: list[tuple[str, datetime]]) -> None:
    """The schema as version 8 made it (no mark on the grants; the outbox indexed by subject
    and purpose), holding a pending expiry notice of `recommendations` per (subject, due)."""
    now = naive(datetime.now(UTC))
    with app.app_context():
        ring = keyring()
        rows = [
            (f"msg_notice{n}", "crm_sync", "consent.changed", ring.pseudonym(subject))
            + ("recommendations", "sealed", "pending", 0, now, naive(due))
            for n, (subject, due) in enumerate(notices)
        ]
    with raw(app.config) as db:
        db.execute("DROP INDEX consent_record_expiry_notice_at")
        db.execute("ALTER TABLE consent_record DROP COLUMN expiry_notice_at")
        db.execute("CREATE INDEX delivery_subject_purpose ON delivery (subject, purpose)")
        db.executemany(
            "INSERT INTO delivery (message_id, recipient, type, subject, purpose, payload,"
            " status, attempts, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("UPDATE schema_version SET version = 8")


def marks(app: Flask) -> list[tuple[str, bool, Any]]:
    """(subject pseudonym, granted, expiry_notice_at) of every consent record, in order."""
    with raw(app.config) as db:
        rows = db.execute(
            "SELECT s.pseudonym, c.granted, c.expiry_notice_at FROM consent_record c"
            " JOIN subject s ON s.id = c.subject_id ORDER BY c.id"
        ).fetchall()
    return [(str(p), bool(g), e) for p, g, e in rows]


def test_step_9_turns_each_waiting_notice_into_the_mark_of_its_grant(
    app: Flask, admin: Caller
) -> None:
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    put(admin, "alice", True, expires_at=due)  # still granted: her notice becomes her mark
    put(admin, "bob", True, expires_at=due)
    put(admin, "bob", False)  # withdrawn since: his notice goes, and no mark
    put(admin, "carol", True)  # no notice waits for her: no mark
    fresh = introspect(app)
    with raw(app.config) as db:
        db.execute("UPDATE consent_record SET expiry_notice_at = NULL")
        changes = db.execute("SELECT COUNT(*) FROM delivery").fetchone()[0]
    as_version_8(app, [("alice", due), ("bob", due)])
    assert introspect(app) != fresh

    with app.app_context(), database.connection_context():
        assert upgrade(keyring()) == (8, LATEST)
        assert current_version() == LATEST
        assert upgrade(keyring()) == (LATEST, LATEST)

    assert introspect(app) == fresh
    with app.app_context():
        alice, bob, carol = (keyring().pseudonym(name) for name in ("alice", "bob", "carol"))
    found = marks(app)
    assert [(p, g) for p, g, _ in found] == [
        (alice, True),
        (bob, True),
        (bob, False),
        (carol, True),
    ]
    [alice_mark, *others] = [e for _, _, e in found]
    assert alice_mark is not None and str(alice_mark).startswith(str(naive(due)))
    assert others == [None, None, None]
    with raw(app.config) as db:
        left = db.execute("SELECT message_id FROM delivery").fetchall()
    assert len(left) == changes  # the changes' own messages stay, the notices are gone
    assert not any(str(row[0]).startswith("msg_notice") for row in left)
