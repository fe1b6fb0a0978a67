"""Data-subject requests: access (everything held, decrypted) and erasure (crypto-shredded).

A subject and a bystander are seeded through the API; what an erasure leaves behind is read
from the stored rows of both databases (SQLite or PostgreSQL) and from copies taken before it;
on SQLite also from the files themselves (raw bytes, WAL).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from playhouse.db_url import parse

from gateway import keyring
from gateway.crypto import KeyringError, canonical_json, decrypt_field, verify_signature
from gateway.store.db import database
from gateway.store.keystore import keystore, wrapped_key
from gateway.store.models import AuditEntry, Subject
from tests.conftest import Caller, verify_audit
from tests.stores import POSTGRES, connect, raw

SUBJECT = "erasable-4418"
BYSTANDER = "bystander-0007"
VALUES = {
    SUBJECT: {"email": "ann.erasable@example.org", "phone": "+972-50-555-0199"},
    BYSTANDER: {"email": "bob.stays@example.org", "phone": "+972-50-555-0123"},
}
BRANDS = {SUBJECT: "Zephyrwear", BYSTANDER: "Quokkafeet"}
ITEMS = {SUBJECT: "ann", BYSTANDER: "bob"}  # item ids must not carry the raw subject id
EVENTS = (
    ("view", "sku-1", "shoes", 49),
    ("click", "sku-2", "books", 26),
    ("purchase", "sku-3", "shoes", 3),
)
CONSENTS = [
    ("recommendations", True),
    ("ads_personalization", True),
    ("ads_personalization", False),
]
ZERO = {"attributes": 0, "events": 0, "consents": 0}
HELD = {"attributes": 3, "events": 3, "consents": 3}
SUBJECT_ACTIONS = {
    "consent.grant",
    "consent.withdraw",
    "events.collect",
    "attributes.collect",
    "decision",
}
FILES = ("gateway.db", "gateway.db-wal", "keys.db", "keys.db-wal")
STORES = ("DATABASE_URL", "KEYSTORE_URL")

Json = dict[str, Any]
Rows = dict[str, list[dict[str, Any]]]  # every row of every table of one database


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the date: the demo registrations' review_by dates (mobile_location's is past) hold."""
    with time_machine.travel(datetime(2026, 6, 1, tzinfo=UTC), tick=True):
        yield


# -- seeding through the API -------------------------------------------------------------------


def ok(response: Any) -> Json:
    assert response.status_code == 200, response.get_json()
    body: Json = response.get_json()
    return body


def events_of(subject: str) -> list[Json]:
    now = datetime.now(UTC)
    return [
        {
            "type": kind,
            "item_id": f"{ITEMS[subject]}-{item}",
            "category": category,
            "at": (now - timedelta(hours=hours)).isoformat(),
        }
        for kind, item, category, hours in EVENTS
    ]


def attributes_of(subject: str) -> Json:
    return {**VALUES[subject], "favorite_brand": BRANDS[subject]}


def seed(shop: Caller, mailer: Caller, subject: str) -> list[Json]:
    """Consents for two purposes (one withdrawn), three events, three attributes (written by the
    mailer, whose purpose uses contact data), one decision."""
    for purpose, granted in CONSENTS:
        change = {"granted": granted, "source": "web-banner", "notice_version": "2026-05"}
        ok(shop.put(f"/v1/subjects/{subject}/consents/{purpose}", change))
    events = events_of(subject)
    collected = ok(
        shop.post(f"/v1/subjects/{subject}/events", {"database": "shop_events", "events": events})
    )
    assert collected == {"accepted": [0, 1, 2], "refused": {}}
    body = {"database": "crm", "attributes": attributes_of(subject)}
    collected = ok(mailer.patch(f"/v1/subjects/{subject}/attributes", body))
    assert collected == {"accepted": sorted(attributes_of(subject)), "refused": {}}
    decision = personalize(shop, subject)
    assert decision["outcome"] == "allow"
    return events


@pytest.fixture
def seeded(shop: Caller, mailer: Caller) -> list[Json]:
    seed(shop, mailer, BYSTANDER)
    return seed(shop, mailer, SUBJECT)


def personalize(caller: Caller, subject: str) -> Json:
    candidates = [{"id": "c-1", "category": "shoes"}, {"id": "c-2", "category": "books"}]
    body = {"subject_id": subject, "purpose": "recommendations", "candidates": candidates}
    return ok(caller.post("/v1/personalize", body))


def export(caller: Caller, subject: str = SUBJECT, **headers: str) -> Json:
    return ok(caller.get(f"/v1/subjects/{subject}/export", headers=headers))


def erase(caller: Caller, subject: str = SUBJECT) -> Any:
    return caller.request("DELETE", f"/v1/subjects/{subject}")


# -- reading the store -------------------------------------------------------------------------


def pseudonym_of(app: Flask, subject: str) -> str:
    with app.app_context():
        return keyring().pseudonym(subject)


def audit_entries(app: Flask) -> list[AuditEntry]:
    with app.app_context(), database.connection_context():
        return list(AuditEntry.select().order_by(AuditEntry.seq))


def about(app: Flask, subject: str) -> list[AuditEntry]:
    pseudonym = pseudonym_of(app, subject)
    return [entry for entry in audit_entries(app) if entry.subject == pseudonym]


def key_of(app: Flask, subject: str) -> str | None:
    """The subject's wrapped data key in the live keystore."""
    with app.app_context(), keystore.connection_context():
        return wrapped_key(pseudonym_of(app, subject))


def home(app: Flask) -> Path:
    return Path(app.config["HOME"])


HOLDINGS_SQL = {
    "attributes": "SELECT a.* FROM attribute a JOIN subject s ON s.id = a.subject_id"
    " WHERE s.pseudonym = ? ORDER BY a.id",
    "events": "SELECT e.* FROM event e JOIN subject s ON s.id = e.subject_id"
    " WHERE s.pseudonym = ? ORDER BY e.id",
    "consents": "SELECT c.* FROM consent_record c JOIN subject s ON s.id = c.subject_id"
    " WHERE s.pseudonym = ? ORDER BY c.id",
    "subject": "SELECT * FROM subject WHERE pseudonym = ?",
}


def rows_of(app: Flask, pseudonym: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row held about a pseudonym, in full."""
    with raw(app.config) as db:
        return {
            name: [tuple(row) for row in db.execute(sql, (pseudonym,)).fetchall()]
            for name, sql in HOLDINGS_SQL.items()
        }


def totals(app: Flask) -> dict[str, int]:
    with raw(app.config) as db:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("subject", "attribute", "event", "consent_record")
        }


def fold_wal(path: Path) -> None:
    """Checkpoint a SQLite file's write-ahead log into the file and empty it."""
    with connect(f"sqlite:///{path}") as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


def stored_bytes(app: Flask) -> dict[str, bytes]:
    """The raw bytes of both SQLite databases and their write-ahead logs."""
    return {
        name: (home(app) / name).read_bytes() if (home(app) / name).exists() else b""
        for name in FILES
    }


def snapshot(url: str) -> Rows:
    """A copy of every row of every table of the database at `url`, as column -> value."""
    with connect(url) as db:
        copied: Rows = {}
        for table in db.tables():
            cursor = db.execute(f"SELECT * FROM {table}")
            names = [column[0] for column in cursor.description]
            copied[table] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return copied


def stored_rows(app: Flask) -> dict[str, Rows]:
    """Every row of both of the app's databases, the main one and the keystore."""
    return {store: snapshot(app.config[store]) for store in STORES}


def as_text(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def row_text(rows: list[dict[str, Any]]) -> bytes:
    """A table's stored values, one per line, as the scan reads them."""
    return b"\n".join(as_text(value) for row in rows for value in row.values())


def sealed_in(rows: Rows, pseudonym: str) -> dict[str, str]:
    """The subject's encrypted attribute values in a copy of the main database's rows."""
    [subject] = [row["id"] for row in rows["subject"] if row["pseudonym"] == pseudonym]
    return {
        row["name"]: row["value"]
        for row in rows["attribute"]
        if row["subject_id"] == subject and row["sealed"]
    }


def sealed_values(url: str, pseudonym: str) -> dict[str, str]:
    """The subject's encrypted attribute values as stored in the database at `url`."""
    sql = (
        "SELECT a.name, a.value FROM attribute a JOIN subject s ON s.id = a.subject_id"
        " WHERE s.pseudonym = ? AND a.sealed"
    )
    with connect(url) as db:
        return {name: value for name, value in db.execute(sql, (pseudonym,)).fetchall()}


def backed_up_key(url: str, pseudonym: str) -> str:
    with connect(url) as db:
        row = db.execute(
            "SELECT wrapped_key FROM subject_key WHERE pseudonym = ?", (pseudonym,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def keystore_keys(app: Flask) -> list[str]:
    """Every wrapped key left in the live keystore database."""
    with raw(app.config, "KEYSTORE_URL") as db:
        return [row[0] for row in db.execute("SELECT wrapped_key FROM subject_key")]


def unseal(app: Flask, wrapped: str, sealed: dict[str, str]) -> dict[str, Any]:
    with app.app_context():
        data_key = keyring().unwrap_key(wrapped)
    return {
        name: json.loads(decrypt_field(data_key, token, f"attribute:crm:{name}"))
        for name, token in sealed.items()
    }


# -- access requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["auditor", "admin"])
def test_an_export_holds_everything_about_the_subject_decrypted(
    app: Flask, seeded: list[Json], request: pytest.FixtureRequest, role: str
) -> None:
    caller: Caller = request.getfixturevalue(role)
    pseudonym = pseudonym_of(app, SUBJECT)

    body = export(caller, **{"X-Request-Id": "access-request-17"})

    assert (body["subject_id"], body["pseudonym"]) == (SUBJECT, pseudonym)
    assert pseudonym != SUBJECT and pseudonym.startswith("v1:")
    attributes = {(a["database"], a["name"]): a["value"] for a in body["attributes"]}
    assert attributes == {("crm", name): value for name, value in attributes_of(SUBJECT).items()}
    assert attributes["crm", "email"] == "ann.erasable@example.org"
    exported = [
        (e["database"], e["type"], e["item_id"], e["category"], datetime.fromisoformat(e["at"]))
        for e in body["events"]
    ]
    posted = [
        ("shop_events", e["type"], e["item_id"], e["category"], datetime.fromisoformat(e["at"]))
        for e in seeded
    ]
    assert exported == posted
    entries = about(app, SUBJECT)
    assert [(e["seq"], e["hash"]) for e in body["audit_entries"]] == [
        (e.seq, e.hash) for e in entries
    ]
    assert {e["subject"] for e in body["audit_entries"]} == {pseudonym}
    assert {e["action"] for e in body["audit_entries"]} == SUBJECT_ACTIONS | {"subject.export"}
    assert SUBJECT not in json.dumps(body["audit_entries"])
    assert about(app, BYSTANDER)  # the bystander has entries, and none of them was exported
    last = audit_entries(app)[-1]
    assert (last.action, last.subject, last.outcome) == ("subject.export", pseudonym, "exported")
    assert last.request_id == "access-request-17"
    assert last.actor.startswith(f"test-{role}-")
    assert body["audit_entries"][-1]["seq"] == last.seq
    assert verify_audit(app).ok


@pytest.mark.parametrize("role", ["auditor", "admin"])
def test_an_export_carries_the_consent_history_with_receipts_that_verify(
    app: Flask, seeded: list[Json], request: pytest.FixtureRequest, role: str
) -> None:
    caller: Caller = request.getfixturevalue(role)
    signing = ok(caller.get("/v1/keys/signing"))

    consents = export(caller)["consents"]

    assert [(c["purpose"], c["granted"]) for c in consents] == CONSENTS
    for consent in consents:
        receipt = consent["receipt"]
        payload = receipt["payload"]
        assert payload["subject"] == pseudonym_of(app, SUBJECT)
        assert (payload["purpose"], payload["granted"]) == (consent["purpose"], consent["granted"])
        assert payload["key_id"] == signing["key_id"]
        signed = canonical_json(payload)
        assert verify_signature(signing["public_key"], receipt["signature"], signed)
        forged = canonical_json({**payload, "granted": not payload["granted"]})
        assert not verify_signature(signing["public_key"], receipt["signature"], forged)


@pytest.mark.parametrize("role", ["auditor", "admin"])
def test_an_unknown_subject_exports_empty_lists(
    app: Flask, seeded: list[Json], request: pytest.FixtureRequest, role: str
) -> None:
    caller: Caller = request.getfixturevalue(role)
    before = totals(app)

    body = export(caller, "never-seen-9")

    assert (body["attributes"], body["events"], body["consents"]) == ([], [], [])
    # The only entry about an unknown subject is the one this request appended.
    [entry] = body["audit_entries"]
    assert (entry["action"], entry["subject"]) == (
        "subject.export",
        pseudonym_of(app, "never-seen-9"),
    )
    assert totals(app) == before
    assert verify_audit(app).ok


@pytest.mark.parametrize("role", ["shop", "mailer"])
def test_an_app_client_may_not_export(
    app: Flask, seeded: list[Json], request: pytest.FixtureRequest, role: str
) -> None:
    caller: Caller = request.getfixturevalue(role)
    before = len(audit_entries(app))

    response = caller.get(f"/v1/subjects/{SUBJECT}/export")

    assert response.status_code == 403
    assert "ann.erasable@example.org" not in response.get_data(as_text=True)
    assert len(audit_entries(app)) == before


# -- erasure -----------------------------------------------------------------------------------


def test_erasure_deletes_the_subject_keeps_the_bystander_and_the_pseudonymous_audit(
    app: Flask, seeded: list[Json], admin: Caller, auditor: Caller
) -> None:
    pseudonym, bystander = pseudonym_of(app, SUBJECT), pseudonym_of(app, BYSTANDER)
    bystander_rows, bystander_key = rows_of(app, bystander), key_of(app, BYSTANDER)
    entries_before = [e.hash for e in about(app, SUBJECT)]
    assert {len(rows) for rows in rows_of(app, pseudonym).values()} == {1, 3}

    body = ok(erase(admin))

    assert body == {"subject_id": SUBJECT, "erased": True, "key_destroyed": True, "deleted": HELD}
    assert rows_of(app, pseudonym) == {name: [] for name in HOLDINGS_SQL}
    assert rows_of(app, bystander) == bystander_rows
    assert totals(app) == {"subject": 1, "attribute": 3, "event": 3, "consent_record": 3}
    assert key_of(app, SUBJECT) is None
    assert key_of(app, BYSTANDER) == bystander_key is not None
    after = about(app, SUBJECT)
    assert [e.hash for e in after[:-2]] == entries_before
    # One entry orders the key destroyed with the data's deletion; once it is, another says so.
    erased, confirmed = after[-2:]
    assert (erased.action, erased.outcome) == ("subject.erase", "erased")
    assert json.loads(erased.fields) == {"deleted": HELD, "key": "destroy_pending"}
    assert (confirmed.action, confirmed.outcome) == ("subject.erase", "key_destroyed")
    assert json.loads(confirmed.fields) == {"key": "destroyed", "ordered_by": erased.seq}
    assert verify_audit(app).ok
    # The pseudonymous trail is still there for an auditor; the data is not.
    remaining = export(auditor)
    assert (remaining["attributes"], remaining["events"], remaining["consents"]) == ([], [], [])
    assert [e["hash"] for e in remaining["audit_entries"][:-1]] == [e.hash for e in after]


def assert_nothing_plain(stored: dict[str, bytes]) -> None:
    """No PII value of either subject, and neither raw id, in any file; the preference is."""
    # The scan sees stored text: the bystander's plain (non-PII) preference is in there.
    assert BRANDS[BYSTANDER].encode() in b"".join(stored.values())
    secrets = [*VALUES[SUBJECT].values(), *VALUES[BYSTANDER].values(), SUBJECT, BYSTANDER]
    for name, data in stored.items():
        for secret in secrets:
            assert secret.encode() not in data, (name, secret)


def assert_no_row_plain(stored: dict[str, Rows]) -> None:
    """No PII value of either subject, and neither raw id, in any stored row of either database."""
    texts = {
        (store, table): row_text(rows)
        for store, tables in stored.items()
        for table, rows in tables.items()
    }
    # The scan sees stored text: the bystander's plain (non-PII) preference is in there.
    assert BRANDS[BYSTANDER].encode() in texts["DATABASE_URL", "attribute"]
    secrets = [*VALUES[SUBJECT].values(), *VALUES[BYSTANDER].values(), SUBJECT, BYSTANDER]
    for where, text in texts.items():
        for secret in secrets:
            assert secret.encode() not in text, (where, secret)


def test_no_plaintext_pii_or_raw_id_is_in_any_stored_row_before_or_after_erasure(
    app: Flask, seeded: list[Json], admin: Caller
) -> None:
    pseudonym = pseudonym_of(app, SUBJECT)
    before = stored_rows(app)
    held = {table: len(rows) for table, rows in before["DATABASE_URL"].items()}
    assert held["subject"] == 2 and held["attribute"] == held["event"] == 6
    assert held["consent_record"] == 6 and held["audit_entry"] == 12 and held["api_client"] == 3
    assert len(before["KEYSTORE_URL"]["subject_key"]) == 2
    assert pseudonym.encode() in row_text(before["KEYSTORE_URL"]["subject_key"])
    assert_no_row_plain(before)

    ok(erase(admin))

    after = stored_rows(app)
    assert len(after["KEYSTORE_URL"]["subject_key"]) == 1
    # The pseudonymous trail stays readable, and the scan reads it.
    assert pseudonym.encode() in row_text(after["DATABASE_URL"]["audit_entry"])
    assert_no_row_plain(after)


@pytest.mark.sqlite
@pytest.mark.parametrize("keep_wal", [True, False], ids=["wal_held_open", "wal_folded"])
def test_no_plaintext_pii_or_raw_id_is_in_the_files_before_or_after_erasure(
    app: Flask, seeded: list[Json], admin: Caller, keep_wal: bool
) -> None:
    with ExitStack() as stack:
        if keep_wal:
            # A second connection keeps SQLite from folding and removing the WAL on close.
            for name in ("gateway.db", "keys.db"):
                connection = stack.enter_context(connect(f"sqlite:///{home(app) / name}"))
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        assert_nothing_plain(stored_bytes(app))

        ok(erase(admin))

        if keep_wal:
            assert stored_bytes(app)["gateway.db-wal"]
        else:
            fold_wal(home(app) / "gateway.db")
            fold_wal(home(app) / "keys.db")
        stored = stored_bytes(app)
    assert stored["gateway.db"] and stored["keys.db"]
    assert_nothing_plain(stored)


@pytest.mark.parametrize("role", ["auditor", "shop", "mailer"])
def test_only_an_admin_may_erase(
    app: Flask, seeded: list[Json], request: pytest.FixtureRequest, role: str
) -> None:
    caller: Caller = request.getfixturevalue(role)
    pseudonym = pseudonym_of(app, SUBJECT)
    rows, key, before = rows_of(app, pseudonym), key_of(app, SUBJECT), len(audit_entries(app))

    response = erase(caller)

    assert response.status_code == 403
    assert (rows_of(app, pseudonym), key_of(app, SUBJECT)) == (rows, key)
    assert key is not None
    assert len(audit_entries(app)) == before


def opened_by_live_key(app: Flask, sealed: dict[str, str]) -> str:
    """The subject's sealed email and phone in a copy, before erasure: ciphertext that the
    subject's live key opens; returns that key."""
    assert set(sealed) == {"email", "phone"}
    assert all(VALUES[SUBJECT][name] not in token for name, token in sealed.items())
    live_key = key_of(app, SUBJECT)
    assert live_key is not None
    assert unseal(app, live_key, sealed) == VALUES[SUBJECT]
    return live_key


def assert_no_live_key_opens(app: Flask, sealed: dict[str, str]) -> None:
    """After erasure: the subject's key is gone and no key left in the keystore opens `sealed`."""
    assert key_of(app, SUBJECT) is None
    remaining = keystore_keys(app)
    assert remaining == [key_of(app, BYSTANDER)]
    for wrapped in remaining:
        with pytest.raises(KeyringError):
            unseal(app, wrapped, sealed)


def test_a_copy_of_the_rows_taken_before_erasure_cannot_be_read_for_the_subject_afterwards(
    app: Flask, seeded: list[Json], admin: Caller
) -> None:
    main, keys = app.config["DATABASE_URL"], app.config["KEYSTORE_URL"]
    if POSTGRES:
        # On PostgreSQL the keystore is a database of its own, not a schema beside the tables.
        assert parse(keys)["database"] != parse(main)["database"]
    copy, keys_copy = snapshot(main), snapshot(keys)  # the backups, taken before the erasure
    assert "subject_key" not in copy and set(keys_copy) == {"subject_key"}
    pseudonym = pseudonym_of(app, SUBJECT)
    sealed = sealed_in(copy, pseudonym)
    live_key = opened_by_live_key(app, sealed)
    # The main database's rows hold no key to their own ciphertext.
    assert all(live_key.encode() not in row_text(rows) for rows in copy.values())

    ok(erase(admin))

    # With the keyring and the keystore database as they are now, no key opens the copy.
    assert_no_live_key_opens(app, sealed)
    assert sealed_in(copy, pseudonym) == sealed  # the copy itself is intact
    # Only a copy of the keystore from before the erasure would still read it: the checks above
    # would fail if erasure left the key behind.
    [old_key] = [
        row["wrapped_key"] for row in keys_copy["subject_key"] if row["pseudonym"] == pseudonym
    ]
    assert old_key == live_key
    assert unseal(app, old_key, sealed) == VALUES[SUBJECT]
    for store, tables in stored_rows(app).items():
        for table, rows in tables.items():
            assert old_key.encode() not in row_text(rows), (store, table)


@pytest.mark.sqlite
def test_a_backup_taken_before_erasure_cannot_be_read_for_the_subject_afterwards(
    app: Flask, seeded: list[Json], admin: Caller, tmp_path: Path
) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("gateway.db", "keys.db"):
        fold_wal(home(app) / name)
        shutil.copy2(home(app) / name, backup / name)
    pseudonym = pseudonym_of(app, SUBJECT)
    sealed = sealed_values(f"sqlite:///{backup / 'gateway.db'}", pseudonym)
    live_key = opened_by_live_key(app, sealed)

    ok(erase(admin))

    # With the keyring and the keystore as they are now, no key opens the backup's values.
    assert_no_live_key_opens(app, sealed)
    # Only a copy of keys.db from before the erasure would still read the backup: the test
    # above would fail if erasure left the key behind.
    old_key = backed_up_key(f"sqlite:///{backup / 'keys.db'}", pseudonym)
    assert old_key == live_key
    assert unseal(app, old_key, sealed) == VALUES[SUBJECT]
    for name in ("keys.db", "keys.db-wal"):
        assert old_key.encode() not in stored_bytes(app)[name]


# The entries of an erasure: (outcome, fields); ORDERED stands for the seq of its first entry.
ORDERED = -1
DESTROYED = [
    ("erased", {"deleted": HELD, "key": "destroy_pending"}),
    ("key_destroyed", {"key": "destroyed", "ordered_by": ORDERED}),
]
NO_KEY = [("erased", {"deleted": ZERO, "key": "none"})]
ERASURES = {
    # subject seeded?, then per erasure ((deleted, key_destroyed), entries)
    "known_subject": (True, [((HELD, True), DESTROYED), ((ZERO, False), NO_KEY)]),
    "unknown_subject": (False, [((ZERO, False), NO_KEY), ((ZERO, False), NO_KEY)]),
}
Erasures = list[tuple[tuple[dict[str, int], bool], list[tuple[str, Json]]]]


@pytest.mark.parametrize(("known", "erasures"), list(ERASURES.values()), ids=list(ERASURES))
def test_erasure_is_idempotent_and_always_audited(
    app: Flask,
    shop: Caller,
    mailer: Caller,
    admin: Caller,
    known: bool,
    erasures: Erasures,
) -> None:
    seed(shop, mailer, BYSTANDER)
    if known:
        seed(shop, mailer, SUBJECT)
    bystander = rows_of(app, pseudonym_of(app, BYSTANDER))

    for (deleted, destroyed), expected in erasures:
        before = len(audit_entries(app))
        body = ok(erase(admin))
        assert body == {
            "subject_id": SUBJECT,
            "erased": True,
            "key_destroyed": destroyed,
            "deleted": deleted,
        }
        entries = audit_entries(app)[before:]
        first = entries[0].seq
        assert [(e.action, e.subject, e.outcome, json.loads(e.fields)) for e in entries] == [
            (
                "subject.erase",
                pseudonym_of(app, SUBJECT),
                outcome,
                {k: first if v == ORDERED else v for k, v in fields.items()},
            )
            for outcome, fields in expected
        ]

    assert rows_of(app, pseudonym_of(app, BYSTANDER)) == bystander
    assert totals(app)["subject"] == 1
    assert verify_audit(app).ok


def test_after_erasure_the_subject_falls_back_and_starts_over_with_a_fresh_key(
    app: Flask, seeded: list[Json], shop: Caller, mailer: Caller, admin: Caller
) -> None:
    pseudonym = pseudonym_of(app, SUBJECT)
    old_key = key_of(app, SUBJECT)
    old_sealed = sealed_values(app.config["DATABASE_URL"], pseudonym)
    ok(erase(admin))

    decision = personalize(shop, SUBJECT)
    assert (decision["outcome"], decision["personalized"]) == ("fallback", False)
    assert decision["reasons"] == ["no_consent"]

    body = {"database": "crm", "attributes": {"email": "ann.new@example.org"}}
    assert ok(mailer.patch(f"/v1/subjects/{SUBJECT}/attributes", body))["accepted"] == ["email"]
    new_key = key_of(app, SUBJECT)
    assert new_key is not None and old_key is not None and new_key != old_key
    with app.app_context():
        assert keyring().unwrap_key(new_key) != keyring().unwrap_key(old_key)
    assert set(sealed_values(app.config["DATABASE_URL"], pseudonym)) == {"email"}
    with pytest.raises(KeyringError):
        unseal(app, new_key, old_sealed)
    fresh = export(admin)
    assert [(a["name"], a["value"]) for a in fresh["attributes"]] == [
        ("email", "ann.new@example.org")
    ]
    assert (fresh["events"], fresh["consents"]) == ([], [])
    with app.app_context(), database.connection_context():
        assert Subject.select().where(Subject.pseudonym == pseudonym).count() == 1
    assert verify_audit(app).ok


@pytest.mark.sqlite
def test_after_erasure_the_database_file_and_its_wal_hold_none_of_the_erased_values(
    app: Flask, seeded: list[Json], admin: Caller
) -> None:
    def values_of(subject: str) -> list[str]:
        """The subject's plain preference, event item ids and PII ciphertext, as stored."""
        sealed = sealed_values(app.config["DATABASE_URL"], pseudonym_of(app, subject))
        items = [f"{ITEMS[subject]}-{item}" for _, item, _, _ in EVENTS]
        return [BRANDS[subject], *items, *sealed.values()]

    erased, kept = values_of(SUBJECT), values_of(BYSTANDER)
    assert len(erased) == len(kept) == 6
    with connect(f"sqlite:///{home(app) / 'gateway.db'}") as held:
        # A second connection keeps SQLite from folding and removing the WAL on close.
        held.execute("SELECT count(*) FROM sqlite_master").fetchone()
        before = stored_bytes(app)
        assert before["gateway.db-wal"]
        main = before["gateway.db"] + before["gateway.db-wal"]
        assert all(value.encode() in main for value in erased + kept)

        ok(erase(admin))

        after = stored_bytes(app)
    for name in ("gateway.db", "gateway.db-wal"):
        assert [value for value in erased if value.encode() in after[name]] == [], name
    assert all(value.encode() in after["gateway.db"] + after["gateway.db-wal"] for value in kept)
