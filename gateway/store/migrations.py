"""Schema versions: `gateway init` creates the schema or upgrades an older one, step by step.

    upgrade(keyring)        # -> (version before, version after); idempotent
    check_keyring(keyring)  # KeyringMismatch unless this keyring wrote the database

Each step runs in one transaction with the new version number, so a failed upgrade leaves the
schema as it was. Version 1 is the first versioned schema; a database without a version table but
with tables predates it and is brought up to version 1 by `_to_1`.

A database records the fingerprint of the keyring that writes it (version 3 on): another keyring
would read none of its data, so `upgrade` refuses it before any step runs. A database from before
fingerprints is judged by what its data tells: its latest signed audit checkpoint, else the key
id its pseudonyms were made with.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from peewee import IntegerField, Model
from playhouse.migrate import SchemaMigrator, migrate

from gateway.audit.chain import checkpoint_payload
from gateway.crypto import RESTORE_KEYRING, Keyring, KeyringMismatch, key_id_of, verify_signature
from gateway.store import tallies
from gateway.store.db import database, write_transaction
from gateway.store.keystore import create_keystore_tables, put_key
from gateway.store.models import (
    TABLES,
    AuditCheckpoint,
    AuditEntry,
    AuditPending,
    BaseModel,
    ConsentRecord,
    Delivery,
    EventTally,
    KeyDestruction,
    KeyringFingerprint,
    Subject,
)


class SchemaVersion(BaseModel):
    version = IntegerField()


def _add_missing_columns(migrator: SchemaMigrator, model: type[Model]) -> None:
    table = model._meta.table_name  # type: ignore[attr-defined]
    present = {column.name for column in database.get_columns(table)}
    for field in model._meta.sorted_fields:  # type: ignore[attr-defined]
        if field.column_name not in present:
            migrate(migrator.add_column(table, field.column_name, field))


def _create_missing(migrator: SchemaMigrator) -> None:
    """The tables, columns and indexes of today's models that do not exist yet. Columns come
    before indexes: SQLite would take an index's missing column for a string constant."""
    for model in TABLES:
        if model.table_exists():
            _add_missing_columns(migrator, model)
    database.create_tables(TABLES, safe=True)


def _to_1(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """The unversioned schema: data keys move to the keystore; new tables, columns, indexes."""
    present = {column.name for column in database.get_columns("subject")}
    if "wrapped_key" in present:
        now = datetime.now(UTC)
        rows = database.execute_sql("SELECT pseudonym, wrapped_key FROM subject").fetchall()
        for pseudonym, wrapped in rows:
            put_key(pseudonym, wrapped, now)
        migrate(migrator.drop_column("subject", "wrapped_key"))
    _create_missing(migrator)
    # Receipts signed so far were signed by the only keyring there was.
    ConsentRecord.update(key_id=keyring.key_id).where(ConsentRecord.key_id == "").execute()


def _to_2(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """Indexes on (event type, time) and (attribute name, update time), for purges."""
    _create_missing(migrator)


def _add_keyring_fingerprint(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """The fingerprint of the keyring that wrote the data (which `upgrade` checked first)."""
    database.create_tables([KeyringFingerprint], safe=True)
    if recorded_fingerprint() is None:
        _record_fingerprint(keyring)


def _add_key_destructions(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """The table of data keys an erasure ordered destroyed and no entry yet confirmed."""
    database.create_tables([KeyDestruction], safe=True)


def _add_audit_scheme_2(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """Audit scheme 2: the pending table the sequencer chains from, and each entry's scheme
    and id (hashed from scheme 2 on; NULL in the entries chained before)."""
    database.create_tables([AuditPending], safe=True)
    _add_missing_columns(migrator, AuditEntry)  # entry_id with its unique index
    _add_missing_columns(migrator, AuditCheckpoint)  # every


def _add_event_tallies(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """Day tallies of the events, kept by triggers: counted once here from what is stored."""
    database.create_tables([EventTally], safe=True)
    tallies.install()
    tallies.rebuild()


def _add_consent_tcf_columns(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """What a consent record made from an IAB TCF string keeps of it (NULL in the others):
    CMP id, vendor list and policy versions, LastUpdated and the string's SHA-256."""
    table = ConsentRecord._meta.table_name  # type: ignore[attr-defined]
    present = {column.name for column in database.get_columns(table)}
    for field in (
        ConsentRecord.tcf_cmp_id,
        ConsentRecord.tcf_vendor_list_version,
        ConsentRecord.tcf_policy_version,
        ConsentRecord.tcf_last_updated,
        ConsentRecord.tcf_sha256,
    ):
        if field.column_name not in present:
            migrate(migrator.add_column(table, field.column_name, field))


def _add_deliveries(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """The outbox: messages for the recipients, written with the changes they report; and each
    subject's sealed id, which a resync names it by (set at its next consent change)."""
    database.create_tables([Delivery], safe=True)
    _add_missing_columns(migrator, Subject)


def _find_lapses_by_scan(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """Expiry notices are no longer queued with a grant, due when it lapses: the grant is marked
    (`expiry_notice_at`) and the scheduler queues the notice when it finds it lapsed. Each notice
    still waiting becomes the mark on the grant it was queued for, and goes."""
    _add_missing_columns(migrator, ConsentRecord)
    database.create_tables([ConsentRecord], safe=True)  # its index on the mark
    record_id: Any = ConsentRecord._meta.primary_key  # type: ignore[attr-defined]
    waiting = Delivery.select().where(
        (Delivery.status == "pending")
        & (Delivery.attempts == 0)
        & (Delivery.next_attempt_at > Delivery.created_at)
        & Delivery.purpose.is_null(False)
    )
    for notice in waiting.order_by(Delivery.id):
        latest = (
            ConsentRecord.select()
            .join(Subject)
            .where(Subject.pseudonym == notice.subject, ConsentRecord.purpose == notice.purpose)
            .order_by(ConsentRecord.recorded_at.desc(), record_id.desc())
            .first()
        )
        if latest is not None and latest.granted:
            ConsentRecord.update(expiry_notice_at=notice.next_attempt_at).where(
                record_id == latest.get_id()
            ).execute()
        notice.delete_instance()
    database.execute_sql("DROP INDEX IF EXISTS delivery_subject_purpose")  # what cancelled them


STEPS: dict[int, Callable[[SchemaMigrator, Keyring], None]] = {
    1: _to_1,
    2: _to_2,
    3: _add_keyring_fingerprint,
    4: _add_key_destructions,
    5: _add_audit_scheme_2,
    6: _add_event_tallies,
    7: _add_consent_tcf_columns,
    8: _add_deliveries,
    9: _find_lapses_by_scan,
}
LATEST = max(STEPS)


def current_version() -> int | None:
    """The schema version; 0 for an unversioned schema, None for an empty database."""
    tables = set(database.get_tables())
    if "schema_version" in tables:
        row = SchemaVersion.select().first()
        return int(row.version) if row else 0
    return 0 if "audit_entry" in tables else None


def upgrade(keyring: Keyring) -> tuple[int | None, int]:
    """Create the latest schema in an empty database, or apply the steps an older one lacks.

    Returns the version found (None for an empty database) and the version now in force.
    """
    create_keystore_tables()
    found = current_version()
    if found is None:
        with write_transaction():
            database.create_tables([*TABLES, SchemaVersion])
            tallies.install()
            SchemaVersion.create(version=LATEST)
            _record_fingerprint(keyring)
        return None, LATEST
    check_keyring(keyring)  # before any step: a step may write with the keyring (`_to_1` does)
    migrator = SchemaMigrator.from_database(database.obj)
    for version in range(found + 1, LATEST + 1):
        with write_transaction():
            STEPS[version](migrator, keyring)
            database.create_tables([SchemaVersion], safe=True)
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=version)
    return found, max(found, LATEST)


def recorded_fingerprint() -> str | None:
    """The fingerprint of the keyring that writes this database; None before version 3."""
    if not KeyringFingerprint.table_exists():
        return None
    row = KeyringFingerprint.select().first()  # the one row
    return None if row is None else str(row.fingerprint)


def _record_fingerprint(keyring: Keyring) -> None:
    KeyringFingerprint.create(fingerprint=keyring.fingerprint(), recorded_at=datetime.now(UTC))


def check_keyring(keyring: Keyring, name: str | None = None) -> None:
    """Raise KeyringMismatch unless `keyring` wrote this database; an empty one takes any.

    Reads only and takes no lock, so a readiness probe may call it. `name` says which keyring
    the message is about (by default its key id).
    """
    recorded = recorded_fingerprint()
    if recorded is not None:
        if not keyring.matches_fingerprint(recorded):
            _refuse(keyring, name, f"keyring {key_id_of(recorded)} did")
    elif current_version() is not None:
        evidence = _evidence_of_another_keyring(keyring)
        if evidence is not None:
            _refuse(keyring, name, evidence)


def _refuse(keyring: Keyring, name: str | None, why: str) -> NoReturn:
    raise KeyringMismatch(
        f"{name or f'keyring {keyring.key_id}'} did not write this database ({why}): "
        f"{RESTORE_KEYRING}"
    )


def _evidence_of_another_keyring(keyring: Keyring) -> str | None:
    """What shows that data written before fingerprints is another keyring's: the latest
    signed audit checkpoint, else the key id of the pseudonyms. None when nothing tells."""
    if AuditCheckpoint.table_exists():  # not in version 0
        # a database from before fingerprints (version 3), or one whose fingerprint row was
        # deleted; `every` is a column from version 5 on
        present = {column.name for column in database.get_columns("audit_checkpoint")}
        columns = [AuditCheckpoint.seq, AuditCheckpoint.hash, AuditCheckpoint.at]
        columns += [AuditCheckpoint.key_id, AuditCheckpoint.signature]
        columns += [AuditCheckpoint.every] if "every" in present else []
        latest = AuditCheckpoint.select(*columns).order_by(AuditCheckpoint.seq.desc()).first()
        if latest is not None:
            every = latest.every if "every" in present else None
            payload = checkpoint_payload(latest.seq, latest.hash, latest.at, latest.key_id, every)
            signed = latest.key_id == keyring.key_id and verify_signature(
                keyring.public_key, latest.signature, payload
            )
            return None if signed else f"its audit checkpoint {latest.seq} does not verify with it"
    subject = Subject.select(Subject.pseudonym).first()  # a column of every version
    if subject is not None and key_id_of(subject.pseudonym) != keyring.key_id:
        return f"its pseudonyms were made by keyring {key_id_of(subject.pseudonym)}"
    return None
