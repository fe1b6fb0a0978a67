"""`gateway init` creates the latest schema, and upgrades an older one without losing data.

The older schemas are built from their own DDL, as the gateway of their time created them on the
backend under test (SQLite or PostgreSQL), and hold rows the current gateway wrote:

    version 0   before schema versions: data keys in `subject`, no keystore table, no receipt
                key ids, no checkpoints, leases or purge runs, fewer audit indexes
    version 1   before the purge indexes on event (type, at) and attribute (name, updated_at)
    version 2   before the keyring fingerprint and the key destruction table
    version 4   before audit scheme 2: no pending entries, no entry scheme or id, checkpoints
                that do not sign their interval; its entries and checkpoints are of scheme 1

After `gateway init` the schema must equal a fresh one, every row must be as it was, and the
gateway must read it: PII decrypts, receipts and the audit chain verify; a second init does nothing.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playhouse.db_url import parse

from gateway import keyring
from gateway.audit.chain import GENESIS, HASHED_FIELDS, body_hash, checkpoint_payload
from gateway.crypto import canonical_json, verify_signature
from gateway.store.db import database
from gateway.store.keystore import wrapped_key
from gateway.store.migrations import LATEST, current_version, upgrade
from gateway.store.models import TABLES, Subject
from tests.conftest import GATEWAY, Caller, gateway_environment, verify_audit
from tests.stores import POSTGRES, count_rows, raw


@pytest.fixture
def documents(documents: tuple[Path, Path]) -> tuple[Path, Path]:
    """The demo documents without recipients: the histories rebuilt here in older schemas
    predate the outbox, which holds no message of them."""
    (documents[1] / "recipients.yaml").unlink()
    return documents


# The column types peewee gave each backend; the DDL below is otherwise the same on both.
TYPES = {
    "sqlite": {"id": "INTEGER NOT NULL PRIMARY KEY", "time": "DATETIME", "flag": "INTEGER"},
    "postgresql": {"id": "SERIAL NOT NULL PRIMARY KEY", "time": "TIMESTAMP", "flag": "BOOLEAN"},
}

# The tables of the unversioned gateway (the first release).
VERSION_0 = """
CREATE TABLE api_client (id {id}, name VARCHAR(255) NOT NULL, role VARCHAR(255) NOT NULL,
    purposes TEXT NOT NULL, key_hash VARCHAR(255) NOT NULL, created_at {time} NOT NULL,
    revoked_at {time});
CREATE UNIQUE INDEX api_client_name ON api_client (name);
CREATE UNIQUE INDEX api_client_key_hash ON api_client (key_hash);
CREATE TABLE subject (id {id}, pseudonym VARCHAR(255) NOT NULL, wrapped_key TEXT NOT NULL,
    created_at {time} NOT NULL);
CREATE UNIQUE INDEX subject_pseudonym ON subject (pseudonym);
CREATE TABLE consent_record (id {id}, subject_id INTEGER NOT NULL,
    receipt_id VARCHAR(255) NOT NULL, purpose VARCHAR(255) NOT NULL, granted {flag} NOT NULL,
    source VARCHAR(255) NOT NULL, notice_version VARCHAR(255) NOT NULL,
    recorded_at {time} NOT NULL, expires_at {time}, client VARCHAR(255) NOT NULL,
    policy_hash VARCHAR(255) NOT NULL, signature TEXT NOT NULL,
    FOREIGN KEY (subject_id) REFERENCES subject (id) ON DELETE CASCADE);
CREATE INDEX consent_record_subject_id ON consent_record (subject_id);
CREATE UNIQUE INDEX consent_record_receipt_id ON consent_record (receipt_id);
CREATE INDEX consent_record_subject_id_purpose_recorded_at
    ON consent_record (subject_id, purpose, recorded_at);
CREATE TABLE attribute (id {id}, subject_id INTEGER NOT NULL, database VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL, value TEXT NOT NULL, sealed {flag} NOT NULL,
    updated_at {time} NOT NULL,
    FOREIGN KEY (subject_id) REFERENCES subject (id) ON DELETE CASCADE);
CREATE INDEX attribute_subject_id ON attribute (subject_id);
CREATE UNIQUE INDEX attribute_subject_id_database_name ON attribute (subject_id, database, name);
CREATE TABLE event (id {id}, subject_id INTEGER NOT NULL, database VARCHAR(255) NOT NULL,
    type VARCHAR(255) NOT NULL, item_id TEXT NOT NULL, item_category TEXT NOT NULL,
    sealed {flag} NOT NULL, at {time} NOT NULL, received_at {time} NOT NULL,
    FOREIGN KEY (subject_id) REFERENCES subject (id) ON DELETE CASCADE);
CREATE INDEX event_subject_id ON event (subject_id);
CREATE INDEX event_subject_id_database_type_at ON event (subject_id, database, type, at);
CREATE TABLE audit_entry (seq INTEGER NOT NULL PRIMARY KEY, at VARCHAR(255) NOT NULL,
    actor VARCHAR(255) NOT NULL, action VARCHAR(255) NOT NULL, subject VARCHAR(255),
    purpose VARCHAR(255), outcome VARCHAR(255), reasons TEXT NOT NULL, fields TEXT NOT NULL,
    policy_hash VARCHAR(255) NOT NULL, request_id VARCHAR(255), decision_id VARCHAR(255),
    prev_hash VARCHAR(255) NOT NULL, hash VARCHAR(255) NOT NULL);
CREATE UNIQUE INDEX audit_entry_hash ON audit_entry (hash);
"""

# The tables of schema version 1 (its keystore table is the one of today).
VERSION_1 = """
CREATE TABLE api_client (id {id}, name VARCHAR(255) NOT NULL, role VARCHAR(255) NOT NULL,
    purposes TEXT NOT NULL, key_hash VARCHAR(255) NOT NULL, created_at {time} NOT NULL,
    revoked_at {time});
CREATE UNIQUE INDEX api_client_name ON api_client (name);
CREATE UNIQUE INDEX api_client_key_hash ON api_client (key_hash);
CREATE TABLE subject (id {id}, pseudonym VARCHAR(255) NOT NULL, created_at {time} NOT NULL);
CREATE UNIQUE INDEX subject_pseudonym ON subject (pseudonym);
CREATE TABLE consent_record (id {id}, subject_id INTEGER NOT NULL,
    receipt_id VARCHAR(255) NOT NULL, purpose VARCHAR(255) NOT NULL, granted {flag} NOT NULL,
    source VARCHAR(255) NOT NULL, notice_version VARCHAR(255) NOT NULL,
    recorded_at {time} NOT NULL, expires_at {time}, client VARCHAR(255) NOT NULL,
    policy_hash VARCHAR(255) NOT NULL, key_id VARCHAR(255) NOT NULL, signature TEXT NOT NULL,
    FOREIGN KEY (subject_id) REFERENCES subject (id) ON DELETE CASCADE);
CREATE INDEX consent_record_subject_id ON consent_record (subject_id);
CREATE UNIQUE INDEX consent_record_receipt_id ON consent_record (receipt_id);
CREATE INDEX consent_record_subject_id_purpose_recorded_at
    ON consent_record (subject_id, purpose, recorded_at);
CREATE TABLE attribute (id {id}, subject_id INTEGER NOT NULL, database VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL, value TEXT NOT NULL, sealed {flag} NOT NULL,
    updated_at {time} NOT NULL,
    FOREIGN KEY (subject_id) REFERENCES subject (id) ON DELETE CASCADE);
CREATE INDEX attribute_subject_id ON attribute (subject_id);
CREATE UNIQUE INDEX attribute_subject_id_database_name ON attribute (subject_id, database, name);
CREATE TABLE event (id {id}, subject_id INTEGER NOT NULL, database VARCHAR(255) NOT NULL,
    type VARCHAR(255) NOT NULL, item_id TEXT NOT NULL, item_category TEXT NOT NULL,
    sealed {flag} NOT NULL, at {time} NOT NULL, received_at {time} NOT NULL,
    FOREIGN KEY (subject_id) REFERENCES subject (id) ON DELETE CASCADE);
CREATE INDEX event_subject_id ON event (subject_id);
CREATE INDEX event_subject_id_database_type_at ON event (subject_id, database, type, at);
CREATE TABLE audit_entry (seq INTEGER NOT NULL PRIMARY KEY, at VARCHAR(255) NOT NULL,
    actor VARCHAR(255) NOT NULL, action VARCHAR(255) NOT NULL, subject VARCHAR(255),
    purpose VARCHAR(255), outcome VARCHAR(255), reasons TEXT NOT NULL, fields TEXT NOT NULL,
    policy_hash VARCHAR(255) NOT NULL, request_id VARCHAR(255), decision_id VARCHAR(255),
    prev_hash VARCHAR(255) NOT NULL, hash VARCHAR(255) NOT NULL);
CREATE UNIQUE INDEX audit_entry_hash ON audit_entry (hash);
CREATE INDEX audit_entry_subject_seq ON audit_entry (subject, seq);
CREATE INDEX audit_entry_purpose_seq ON audit_entry (purpose, seq);
CREATE INDEX audit_entry_action_seq ON audit_entry (action, seq);
CREATE INDEX audit_entry_actor_seq ON audit_entry (actor, seq);
CREATE INDEX audit_entry_at ON audit_entry (at);
CREATE TABLE audit_checkpoint (id {id}, seq INTEGER NOT NULL, hash VARCHAR(255) NOT NULL,
    at VARCHAR(255) NOT NULL, key_id VARCHAR(255) NOT NULL, signature TEXT NOT NULL);
CREATE UNIQUE INDEX audit_checkpoint_seq ON audit_checkpoint (seq);
CREATE TABLE lease (name VARCHAR(255) NOT NULL PRIMARY KEY, holder VARCHAR(255) NOT NULL,
    expires_at {time} NOT NULL);
CREATE TABLE purge_run (id {id}, started_at {time} NOT NULL, finished_at {time},
    status VARCHAR(255) NOT NULL, dry_run {flag} NOT NULL, holder VARCHAR(255) NOT NULL,
    policy_hash VARCHAR(255) NOT NULL, report TEXT NOT NULL, progress TEXT NOT NULL);
CREATE TABLE schema_version (id {id}, version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
"""

# The tables of schema version 2: version 1 with the purge indexes.
VERSION_2 = (
    VERSION_1.replace("VALUES (1)", "VALUES (2)")
    + """
CREATE INDEX event_type_at ON event (type, at);
CREATE INDEX attribute_name_updated_at ON attribute (name, updated_at);
"""
)

# The tables of schema version 4: version 2 with the keyring fingerprint and key destructions.
VERSION_4 = (
    VERSION_2.replace("VALUES (2)", "VALUES (4)")
    + """
CREATE TABLE keyring_fingerprint (id {id}, fingerprint VARCHAR(255) NOT NULL,
    recorded_at {time} NOT NULL);
CREATE TABLE key_destruction (id {id}, pseudonym VARCHAR(255) NOT NULL,
    key_fingerprint VARCHAR(255) NOT NULL, ordered_by INTEGER NOT NULL,
    ordered_at {time} NOT NULL);
CREATE UNIQUE INDEX key_destruction_pseudonym_key_fingerprint
    ON key_destruction (pseudonym, key_fingerprint);
"""
)

OLD_SCHEMAS = {0: VERSION_0, 1: VERSION_1, 2: VERSION_2, 4: VERSION_4}

Rows = dict[str, list[dict[str, Any]]]
Schema = dict[str, tuple[list[Any], list[Any], list[Any]]]

NOTICE = {"source": "banner", "notice_version": "1"}
CANDIDATES = [{"id": "b-1", "category": "books"}, {"id": "s-1", "category": "shoes"}]
ATTRIBUTES = {"email": "alice@example.com", "favorite_brand": "acme"}


def write_history(admin: Caller, shop: Caller) -> None:
    """Consents, a sealed and a plain attribute, events and decisions for alice, through the API."""
    for purpose in ("recommendations", "email_marketing"):
        body = {"granted": True, **NOTICE}
        assert admin.put(f"/v1/subjects/alice/consents/{purpose}", body).status_code == 200
    body = {"database": "crm", "attributes": ATTRIBUTES}
    assert admin.patch("/v1/subjects/alice/attributes", body).status_code == 200
    at = "2026-11-01T10:00:00+00:00"
    events = [
        {"type": "view", "item_id": "s-1", "category": "shoes", "at": at},
        {"type": "purchase", "item_id": "b-7", "category": "books", "at": at},
    ]
    body = {"database": "shop_events", "events": events}
    assert shop.post("/v1/subjects/alice/events", body).status_code == 200
    personalize = {"subject_id": "alice", "purpose": "recommendations", "candidates": CANDIDATES}
    assert shop.post("/v1/personalize", personalize).status_code == 200


def as_scheme_1(app: Flask) -> None:
    """Make the stored log what a gateway before schema version 5 wrote: entries of scheme 1
    (no scheme or id, hashed without them) and checkpoints that do not sign an interval."""
    with app.app_context():
        ring = keyring()
    with raw(app.config) as db:
        rows = db.execute("SELECT * FROM audit_entry ORDER BY seq").fetchall()
        prev, hashes = GENESIS, {}
        for row in rows:
            body = {name: row[name] for name in HASHED_FIELDS if name != "prev_hash"}
            body.update(prev_hash=prev, reasons=json.loads(body["reasons"]))
            body["fields"] = json.loads(body["fields"])
            prev = hashes[row["seq"]] = body_hash(body)
            db.execute(
                "UPDATE audit_entry SET scheme = NULL, entry_id = NULL, prev_hash = ?, hash = ? "
                "WHERE seq = ?",
                (body["prev_hash"], prev, row["seq"]),
            )
        for checkpoint in db.execute("SELECT * FROM audit_checkpoint").fetchall():
            seq = checkpoint["seq"]
            payload = checkpoint_payload(seq, hashes[seq], checkpoint["at"], ring.key_id)
            db.execute(
                "UPDATE audit_checkpoint SET hash = ?, key_id = ?, signature = ?, every = NULL "
                "WHERE seq = ?",
                (hashes[seq], ring.key_id, ring.sign(payload), seq),
            )


def introspect(app: Flask) -> Schema:
    """Every table's columns, indexes and foreign keys, as peewee reads them."""
    with app.app_context(), database.connection_context():
        return {
            table: (
                sorted(
                    (c.name, c.data_type, c.null, c.primary_key)
                    for c in database.get_columns(table)
                ),
                sorted((i.name, tuple(i.columns), i.unique) for i in database.get_indexes(table)),
                sorted(
                    (f.column, f.dest_table, f.dest_column)
                    for f in database.get_foreign_keys(table)
                ),
            )
            for table in database.get_tables()
        }


def stored_rows(app: Flask) -> Rows:
    """Every row of every table but schema_version and keyring_fingerprint (which init
    writes), in primary key order."""
    with raw(app.config) as db:
        return {
            table: [
                dict(zip(row.keys(), row, strict=True))
                for row in db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            ]
            for table in db.tables()
            if table not in ("schema_version", "keyring_fingerprint")
        }


def stored_keys(app: Flask) -> dict[str, str]:
    with raw(app.config, "KEYSTORE_URL") as keystore:
        rows = keystore.execute("SELECT pseudonym, wrapped_key FROM subject_key").fetchall()
    return {row["pseudonym"]: row["wrapped_key"] for row in rows}


def rebuild_as(app: Flask, version: int) -> None:
    """Replace the app's tables by those `version` created, holding the same rows (version 0:
    with each data key in the subject table, and no keystore table)."""
    rows, keys = stored_rows(app), stored_keys(app)
    if version == 0:
        with raw(app.config, "KEYSTORE_URL") as keystore:
            keystore.execute("DROP TABLE subject_key")
    with raw(app.config) as db:
        for table in reversed(db.tables()):
            db.execute(f"DROP TABLE {table}")
        ddl = OLD_SCHEMAS[version].format(**TYPES["postgresql" if db.postgres else "sqlite"])
        for statement in filter(str.strip, ddl.split(";")):
            db.execute(statement)
        tables = db.tables()
        # event_tally is counted from the events: the upgrade that adds it counts them again
        held = [table for table, found in rows.items() if found and table != "event_tally"]
        lost = [table for table in held if table not in tables]
        assert not lost, f"the test's history has rows version {version} cannot hold: {lost}"
        for table in (table for table in tables if rows.get(table)):
            cursor = db.execute(f"SELECT * FROM {table} WHERE 1 = 0")
            names = [column[0] for column in cursor.description]
            values = [
                [{**row, "wrapped_key": keys.get(row.get("pseudonym", ""))}[n] for n in names]
                for row in rows[table]
            ]
            marks = ", ".join("?" for _ in names)
            db.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", values)
            if db.postgres and "id" in names:  # as if the rows had been inserted one by one
                last = max(row["id"] for row in rows[table])
                db.execute("SELECT setval(pg_get_serial_sequence(?, 'id'), ?)", (table, last))
        if "keyring_fingerprint" in tables:  # version 3 on: recorded by the gateway of then
            with app.app_context():
                fingerprint = keyring().fingerprint()
            db.execute(
                "INSERT INTO keyring_fingerprint (fingerprint, recorded_at) VALUES (?, ?)",
                (fingerprint, datetime.now(UTC).replace(tzinfo=None)),
            )


def run_init(app: Flask, runner: Any, how: str) -> str:
    """`gateway init` through the app's CLI runner, or as a process of its own."""
    if how == "runner":
        result = runner.invoke(args=["init"])
        assert result.exit_code == 0, result.output
        return str(result.output)
    process = subprocess.run(
        [str(GATEWAY), "init"],
        env=gateway_environment(app),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    return process.stdout


def check_upgraded(
    app: Flask, admin: Caller, fresh: Schema, before: Rows, keys: dict[str, str]
) -> None:
    """The schema is the latest, every row is as it was and the gateway reads them."""
    with app.app_context(), database.connection_context():
        assert current_version() == LATEST
    assert count_rows(app.config, "SELECT count(*) FROM schema_version") == 1
    assert introspect(app) == fresh
    after = stored_rows(app)
    entries = before.pop("audit_entry")
    assert after.pop("audit_entry")[: len(entries)] == entries  # init appends its policy load
    signed = before.pop("audit_checkpoint", [])
    assert after.pop("audit_checkpoint", [])[: len(signed)] == signed  # and may sign it
    # the tallies counted again from the events are the ones the triggers kept (ids aside)
    assert tallies(after.pop("event_tally")) == tallies(before.pop("event_tally"))
    assert after == before
    assert stored_keys(app) == keys
    ready = admin.get("/readyz")
    assert ready.status_code == 200, ready.get_json()

    exported = admin.get("/v1/subjects/alice/export").get_json()
    assert {a["name"]: a["value"] for a in exported["attributes"]} == ATTRIBUTES
    assert sorted(e["item_id"] for e in exported["events"]) == ["b-7", "s-1"]
    public_key = admin.get("/v1/keys/signing").get_json()["public_key"]
    assert len(exported["consents"]) == 2
    for consent in exported["consents"]:
        receipt = consent["receipt"]
        payload = canonical_json(receipt["payload"])
        assert verify_signature(public_key, receipt["signature"], payload)
    verification = admin.get("/v1/audit/verify").get_json()
    assert verification["ok"] is True, verification
    assert verification["entries"] == len(entries) + 2  # init's policy load, the export


def tallies(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in row.items() if k != "id"} for row in rows), key=repr)


def check_still_writable(app: Flask, admin: Caller, shop: Caller) -> None:
    """New rows go in after the old ones (PostgreSQL: the id sequences continue)."""
    body = {"granted": False, **NOTICE}
    assert admin.put("/v1/subjects/alice/consents/email_marketing", body).status_code == 200
    body = {"granted": True, **NOTICE}
    assert admin.put("/v1/subjects/bob/consents/recommendations", body).status_code == 200
    personalize = {"subject_id": "alice", "purpose": "recommendations", "candidates": CANDIDATES}
    decision = shop.post("/v1/personalize", personalize)
    assert decision.status_code == 200, decision.get_json()
    assert decision.get_json()["outcome"] == "allow"
    verification = verify_audit(app)
    assert verification.ok, verification


def check_second_init_is_a_no_op(app: Flask, runner: Any, how: str) -> None:
    schema, rows = introspect(app), stored_rows(app)
    assert "schema version" not in run_init(app, runner, how)
    assert introspect(app) == schema
    assert stored_rows(app) == rows
    assert count_rows(app.config, "SELECT count(*) FROM schema_version") == 1


def test_a_new_database_gets_the_latest_schema_once(app: Flask) -> None:
    with app.app_context(), database.connection_context():
        assert current_version() == LATEST
        assert upgrade(keyring()) == (LATEST, LATEST)


def downgrade_to_unversioned(app: Flask, pseudonym: str) -> str:
    """Rewrite the SQLite files into the schema of before versioning: keys in the subject table."""
    with app.app_context(), database.connection_context():
        wrapped = wrapped_key(pseudonym)
    assert wrapped is not None
    home = Path(app.config["HOME"])
    with closing(sqlite3.connect(home / "gateway.db")) as db, db:
        for table in ("schema_version", "audit_checkpoint", "lease", "purge_run"):
            db.execute(f"DROP TABLE {table}")
        db.execute("ALTER TABLE consent_record DROP COLUMN key_id")
        db.execute("ALTER TABLE subject ADD COLUMN wrapped_key TEXT NOT NULL DEFAULT ''")
        db.execute("UPDATE subject SET wrapped_key = ? WHERE pseudonym = ?", (wrapped, pseudonym))
    with closing(sqlite3.connect(home / "keys.db")) as keys, keys:
        keys.execute("DELETE FROM subject_key")
    return wrapped


@pytest.mark.sqlite
def test_an_unversioned_schema_is_upgraded_by_init(
    app: Flask, admin: Caller, runner: Any, db_path: Path
) -> None:
    consent = {"granted": True, "source": "banner", "notice_version": "1"}
    assert admin.put("/v1/subjects/alice/consents/recommendations", consent).status_code == 200
    body = {"database": "crm", "attributes": {"email": "alice@example.com"}}
    assert admin.patch("/v1/subjects/alice/attributes", body).status_code == 200
    with app.app_context():
        pseudonym = keyring().pseudonym("alice")
    wrapped = downgrade_to_unversioned(app, pseudonym)
    assert admin.get("/readyz").get_json()["code"] == "schema_outdated"

    result = runner.invoke(args=["init"])

    assert result.exit_code == 0, result.output
    assert f"upgraded schema version 0 -> {LATEST}" in result.output
    assert admin.get("/readyz").status_code == 200
    with app.app_context(), database.connection_context():
        assert current_version() == LATEST
        assert wrapped_key(pseudonym) == wrapped
        columns = {c.name for c in database.get_columns("subject")}
    assert "wrapped_key" not in columns
    exported = admin.get("/v1/subjects/alice/export").get_json()
    assert exported["attributes"][0]["value"] == "alice@example.com"
    public_key = admin.get("/v1/keys/signing").get_json()["public_key"]
    receipt = exported["consents"][0]["receipt"]
    assert verify_signature(public_key, receipt["signature"], canonical_json(receipt["payload"]))
    assert admin.get("/v1/audit/verify").get_json()["ok"] is True
    assert runner.invoke(args=["init"]).output.count("schema version") == 0


@pytest.mark.parametrize(
    ("version", "how"), [(0, "runner"), (1, "process"), (2, "runner"), (4, "process")]
)
def test_an_older_schema_built_by_its_own_ddl_is_upgraded_by_init(
    app: Flask, admin: Caller, shop: Caller, runner: Any, version: int, how: str
) -> None:
    write_history(admin, shop)
    if version >= 1:  # checkpoints came with version 1
        assert runner.invoke(args=["audit", "checkpoint"]).exit_code == 0
    as_scheme_1(app)
    with raw(app.config) as db:  # a gateway before version 8 sealed no subject's id
        db.execute("UPDATE subject SET sealed_id = NULL")
        # and one before version 9 marked no grant for the scheduler to find when it lapses
        db.execute("UPDATE consent_record SET expiry_notice_at = NULL")
    fresh, before, keys = introspect(app), stored_rows(app), stored_keys(app)
    assert keys and all(keys.values())
    rebuild_as(app, version)
    with app.app_context(), database.connection_context():
        assert current_version() == version
    assert admin.get("/readyz").get_json()["code"] == "schema_outdated"
    assert introspect(app) != fresh

    output = run_init(app, runner, how)

    assert f"upgraded schema version {version} -> {LATEST}" in output
    check_upgraded(app, admin, fresh, before, keys)
    check_still_writable(app, admin, shop)
    check_second_init_is_a_no_op(app, runner, how)


def table_name(model: Any) -> str:
    return str(model._meta.table_name)


@contextmanager
def another_schema(app: Flask) -> Iterator[str]:
    """Another schema that the open connection reaches by name, but which is not the gateway's:
    a table `subject` of other columns and indexes, and a table the gateway does not have.
    PostgreSQL: a schema beside the one on the URL's search_path; SQLite: an attached database."""
    if POSTGRES:
        schema = database.execute_sql("SELECT current_schema()").fetchone()[0]
        assert parse(app.config["DATABASE_URL"])["options"] == f"-csearch_path={schema}"
        other = f"{schema}_other"
        setup = [
            f"CREATE SCHEMA {other}",
            f"CREATE TABLE {other}.subject (id INTEGER PRIMARY KEY, decoy TEXT NOT NULL)",
            f"CREATE INDEX subject_decoy ON {other}.subject (decoy)",
            f"CREATE TABLE {other}.decoy_only (id INTEGER)",
        ]
        teardown = f"DROP SCHEMA {other} CASCADE"
    else:
        other = "other"
        path = Path(app.config["HOME"]) / "other.db"
        setup = [
            f"ATTACH DATABASE '{path}' AS {other}",
            f"CREATE TABLE {other}.subject (id INTEGER PRIMARY KEY, decoy TEXT NOT NULL)",
            f"CREATE INDEX {other}.subject_decoy ON subject (decoy)",
            f"CREATE TABLE {other}.decoy_only (id INTEGER)",
        ]
        teardown = f"DETACH DATABASE {other}"
    for statement in setup:
        database.execute_sql(statement)
    try:
        yield other
    finally:
        database.execute_sql(teardown)


def test_introspection_reads_the_schema_of_the_connection_only(app: Flask) -> None:
    """The upgrade decides from get_tables/get_columns/get_indexes: on PostgreSQL they must read
    the schema on the connection's search_path (each test's own), never another one."""
    ours = sorted([*(table_name(model) for model in TABLES), "schema_version"])
    with app.app_context(), database.connection_context(), another_schema(app) as other:
        # the other schema is there to be found, had peewee looked in it
        assert database.get_tables(schema=other) == ["decoy_only", "subject"]
        assert [c.name for c in database.get_columns("subject", schema=other)] == ["id", "decoy"]
        assert "subject_decoy" in {i.name for i in database.get_indexes("subject", schema=other)}

        assert database.get_tables() == ours
        assert not database.table_exists("decoy_only")
        columns = [c.name for c in database.get_columns("subject")]
        assert columns == [field.column_name for field in Subject._meta.sorted_fields]
        assert database.get_primary_keys("subject") == ["id"]
        indexes = {i.name for i in database.get_indexes("subject")}
        assert "subject_pseudonym" in indexes
        assert "subject_decoy" not in indexes
        assert {i.name for i in database.get_indexes("event")} >= {"event_type_at"}
        foreign = [(f.column, f.dest_table) for f in database.get_foreign_keys("consent_record")]
        assert foreign == [("subject_id", "subject")]
        assert current_version() == LATEST
