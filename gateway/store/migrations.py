"""Schema versions: `gateway init` creates the schema or upgrades an older one, step by step.

    upgrade(keyring)        # -> (version before, version after); idempotent

Each step runs in one transaction with the new version number, so a failed upgrade leaves the
schema as it was. Version 1 is the first versioned schema; a database without a version table but
with tables predates it and is brought up to version 1 by `_to_1`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from peewee import IntegerField, Model
from playhouse.migrate import SchemaMigrator, migrate

from gateway.crypto import Keyring
from gateway.store.db import database, write_transaction
from gateway.store.keystore import create_keystore_tables, put_key
from gateway.store.models import TABLES, BaseModel, ConsentRecord


class SchemaVersion(BaseModel):
    version = IntegerField()


def _add_missing_columns(migrator: SchemaMigrator, model: type[Model]) -> None:
    table = model._meta.table_name  # type: ignore[attr-defined]
    present = {column.name for column in database.get_columns(table)}
    for field in model._meta.sorted_fields:  # type: ignore[attr-defined]
        if field.column_name not in present:
            migrate(migrator.add_column(table, field.column_name, field))


def _to_1(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """The unversioned schema: data keys move to the keystore; new tables, columns, indexes."""
    present = {column.name for column in database.get_columns("subject")}
    if "wrapped_key" in present:
        now = datetime.now(UTC)
        rows = database.execute_sql("SELECT pseudonym, wrapped_key FROM subject").fetchall()
        for pseudonym, wrapped in rows:
            put_key(pseudonym, wrapped, now)
        migrate(migrator.drop_column("subject", "wrapped_key"))
    database.create_tables(TABLES, safe=True)  # tables and indexes that did not exist yet
    for model in TABLES:
        _add_missing_columns(migrator, model)
    # Receipts signed so far were signed by the only keyring there was.
    ConsentRecord.update(key_id=keyring.key_id).where(ConsentRecord.key_id == "").execute()


def _to_2(migrator: SchemaMigrator, keyring: Keyring) -> None:
    """Indexes on (event type, time) and (attribute name, update time), for purges."""
    database.create_tables(TABLES, safe=True)  # creates the indexes a table lacks


STEPS: dict[int, Callable[[SchemaMigrator, Keyring], None]] = {1: _to_1, 2: _to_2}
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
            SchemaVersion.create(version=LATEST)
        return None, LATEST
    migrator = SchemaMigrator.from_database(database.obj)
    for version in range(found + 1, LATEST + 1):
        with write_transaction():
            STEPS[version](migrator, keyring)
            database.create_tables([SchemaVersion], safe=True)
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=version)
    return found, max(found, LATEST)
