"""Erasure fails closed: no data key is destroyed unless a committed audit entry orders it.

An erasure commits the deletion of the data with an audit entry ordering the key's destruction,
then destroys the key in the keystore, then commits a second entry saying it was destroyed. Each
test breaks one step on the backend under test (an audit table refusing inserts, or a fault that
lets every statement succeed and fails the COMMIT, as a full disk or a deferred constraint would)
and checks that either nothing changed or the log says truthfully what did, and that repeating
the request completes the erasure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

from gateway import keyring
from gateway.store.db import database
from gateway.store.keystore import wrapped_key
from gateway.store.models import Attribute, AuditEntry
from tests.api.test_personalize import break_audit, repair_audit
from tests.api.test_subject_requests import stored_rows
from tests.conftest import Caller, verify_audit
from tests.stores import raw

ATTRIBUTES = {"email": "e@example.com", "favorite_brand": "acme"}
DELETED = {"attributes": 2, "events": 0, "consents": 0}
NOTHING = {"attributes": 0, "events": 0, "consents": 0}

# A fault at COMMIT on an audit entry of the given action and outcome (by default an erasure's):
# the insert succeeds, and the transaction then cannot commit. SQLite: a row breaking a deferred
# foreign key; PostgreSQL: a deferred constraint trigger that raises.
AUDIT_TABLES = ("audit_entry", "audit_pending")  # chained entries, and those waiting for it
COMMIT_FAULT = {
    "sqlite": [
        "CREATE TABLE commit_fault (subject_id INTEGER"
        " REFERENCES subject (id) DEFERRABLE INITIALLY DEFERRED)",
        *(
            f"CREATE TRIGGER commit_fault_{table} AFTER INSERT ON {table}"
            " WHEN NEW.action = '{action}' AND NEW.outcome = '{outcome}'"
            " BEGIN INSERT INTO commit_fault VALUES (-1); END"
            for table in AUDIT_TABLES
        ),
    ],
    "postgresql": [
        "CREATE FUNCTION commit_fault() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'fault at commit'; END $$",
        *(
            f"CREATE CONSTRAINT TRIGGER commit_fault AFTER INSERT ON {table}"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            " WHEN (NEW.action = '{action}' AND NEW.outcome = '{outcome}')"
            " EXECUTE FUNCTION commit_fault()"
            for table in AUDIT_TABLES
        ),
    ],
}
COMMIT_REPAIR = {
    "sqlite": [
        *(f"DROP TRIGGER commit_fault_{table}" for table in AUDIT_TABLES),
        "DROP TABLE commit_fault",
    ],
    "postgresql": [
        *(f"DROP TRIGGER commit_fault ON {table}" for table in AUDIT_TABLES),
        "DROP FUNCTION commit_fault()",
    ],
}


@contextmanager
def commit_fails(app: Flask, outcome: str, action: str = "subject.erase") -> Iterator[None]:
    """Inside the block, a transaction appending an entry of `action` with `outcome` fails at
    COMMIT."""
    with raw(app.config) as db:
        for sql in COMMIT_FAULT["postgresql" if db.postgres else "sqlite"]:
            db.execute(sql.format(action=action, outcome=outcome))
    try:
        yield
    finally:
        with raw(app.config) as db:
            for sql in COMMIT_REPAIR["postgresql" if db.postgres else "sqlite"]:
                db.execute(sql)


def seed_erin(admin: Caller) -> None:
    body = {"database": "crm", "attributes": ATTRIBUTES}
    assert admin.patch("/v1/subjects/erin/attributes", body).status_code == 200


def erase_erin(admin: Caller) -> Any:
    return admin.request("DELETE", "/v1/subjects/erin")


def erin_key(app: Flask) -> str | None:
    with app.app_context(), database.connection_context():
        return wrapped_key(keyring().pseudonym("erin"))


def erin_pseudonym(app: Flask) -> str:
    with app.app_context():
        return keyring().pseudonym("erin")


def entries_after(app: Flask, seq: int) -> list[tuple[str, str | None, str | None, Any]]:
    """(action, subject, outcome, fields) of every audit entry after `seq`."""
    with app.app_context(), database.connection_context():
        found = AuditEntry.select().where(AuditEntry.seq > seq).order_by(AuditEntry.seq)
        return [(e.action, e.subject, e.outcome, json.loads(e.fields)) for e in found]


def last_seq(app: Flask) -> int:
    with app.app_context(), database.connection_context():
        return int(AuditEntry.select().order_by(AuditEntry.seq.desc()).first().seq)


def pending_destructions(app: Flask) -> list[tuple[str, int]]:
    """(pseudonym, ordering entry's seq) of every key destruction ordered and not confirmed."""
    with raw(app.config) as db:
        rows = db.execute("SELECT pseudonym, ordered_by FROM key_destruction ORDER BY id")
        return [(row[0], row[1]) for row in rows.fetchall()]


def assert_completed_by(app: Flask, response: Any, since: int, ordered_by: int | None) -> None:
    """A 200 erasure that destroyed erin's key; its entries after `since` say so, the second
    naming the entry that ordered the destruction (the first, when `ordered_by` is None)."""
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["key_destroyed"] is True
    [(action, subject, outcome, fields), confirmation] = entries_after(app, since)
    assert (action, subject, outcome) == ("subject.erase", erin_pseudonym(app), "erased")
    assert fields["key"] == "destroy_pending"
    ordering = ordered_by if ordered_by is not None else since + 1
    assert confirmation == (
        "subject.erase",
        erin_pseudonym(app),
        "key_destroyed",
        {"key": "destroyed", "ordered_by": ordering},
    )
    assert erin_key(app) is None
    assert pending_destructions(app) == []
    with app.app_context(), database.connection_context():
        assert Attribute.select().count() == 0
    assert verify_audit(app).ok


def test_a_failed_audit_leaves_the_data_and_the_key(app: Flask, admin: Caller) -> None:
    seed_erin(admin)
    break_audit(app)

    response = erase_erin(admin)

    assert response.status_code == 503
    assert response.get_json()["code"] == "audit_unavailable"
    with app.app_context(), database.connection_context():
        assert wrapped_key(keyring().pseudonym("erin")) is not None
        assert Attribute.select().count() == 2

    repair_audit(app)
    since = last_seq(app)
    retried = erase_erin(admin)

    assert_completed_by(app, retried, since, None)
    assert entries_after(app, since)[0][3] == {"deleted": DELETED, "key": "destroy_pending"}


def test_a_commit_that_fails_after_the_audit_leaves_every_row_and_the_key(
    app: Flask, admin: Caller
) -> None:
    seed_erin(admin)
    with commit_fails(app, "erased"):
        before = stored_rows(app)

        response = erase_erin(admin)

        assert response.status_code == 503
        assert response.get_json()["code"] == "database_unavailable"
        # Nothing changed in either database: no entry, no deletion, the key intact.
        assert stored_rows(app) == before
        assert erin_key(app) is not None

    since = last_seq(app)
    retried = erase_erin(admin)

    assert_completed_by(app, retried, since, None)
    assert entries_after(app, since)[0][3] == {"deleted": DELETED, "key": "destroy_pending"}


def test_a_confirmation_that_cannot_commit_leaves_a_truthful_log_that_the_retry_completes(
    app: Flask, admin: Caller
) -> None:
    seed_erin(admin)
    since = last_seq(app)
    with commit_fails(app, "key_destroyed"):
        response = erase_erin(admin)

        assert response.status_code == 503
        assert response.get_json()["code"] == "database_unavailable"
        # The data is gone and the committed entry says the key is to be destroyed, which it
        # was; nothing claims it was confirmed, and the order is still pending.
        [(action, subject, outcome, fields)] = entries_after(app, since)
        assert (action, subject, outcome) == ("subject.erase", erin_pseudonym(app), "erased")
        assert fields == {"deleted": DELETED, "key": "destroy_pending"}
        assert erin_key(app) is None
        assert pending_destructions(app) == [(erin_pseudonym(app), since + 1)]

    retried = erase_erin(admin)

    assert_completed_by(app, retried, since + 1, since + 1)
    assert entries_after(app, since + 1)[0][3] == {"deleted": NOTHING, "key": "destroy_pending"}


def test_the_next_purge_finishes_an_erasure_whose_confirmation_was_cut_short(
    app: Flask, admin: Caller
) -> None:
    seed_erin(admin)
    since = last_seq(app)
    with commit_fails(app, "key_destroyed"):
        assert erase_erin(admin).status_code == 503
    assert pending_destructions(app) == [(erin_pseudonym(app), since + 1)]

    assert admin.post("/v1/purges", json={"dry_run": False}).status_code == 200

    assert pending_destructions(app) == []
    assert erin_key(app) is None
    confirmations = [e for e in entries_after(app, since + 1) if e[2] == "key_destroyed"]
    assert confirmations == [
        (
            "subject.erase",
            erin_pseudonym(app),
            "key_destroyed",
            {"key": "destroyed", "ordered_by": since + 1},
        )
    ]
    assert verify_audit(app).ok
