"""Subject data keys, kept in a database of their own so that erasure destroys them for good.

    bind_keystore("sqlite:///instance/keys.db")
    put_key(pseudonym, keyring.wrap_key(data_key), now)
    wrapped_key(pseudonym)        # None once destroyed
    destroy_key(pseudonym, key_fingerprint(wrapped))

A backup of the main database holds PII only as ciphertext and no key for it; once a subject's
key is destroyed here, no copy of the main database can be read for that subject, even with the
keyring (crypto-shredding). Back this store up on a short rotation, apart from the main one.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from flask import Flask
from peewee import CharField, DatabaseProxy, Model, TextField

from gateway.crypto import sha256_hex
from gateway.store.db import close_pool, fold_wal, open_database, sqlite_files
from gateway.store.models import UTCDateTimeField

keystore = DatabaseProxy()


class SubjectKey(Model):
    pseudonym = CharField(primary_key=True)
    wrapped_key = TextField()
    created_at = UTCDateTimeField()

    class Meta:
        database = keystore
        table_name = "subject_key"


def bind_keystore(url: str) -> None:
    """Point the keystore at `url`; connections to the keystore bound before are closed."""
    db = open_database(url)
    close_pool(keystore)
    keystore.initialize(db)


def init_app(app: Flask) -> None:
    bind_keystore(app.config["KEYSTORE_URL"])

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        if not keystore.is_closed():
            keystore.close()  # back to the pool


def keystore_files() -> list[Path]:
    """The keystore's SQLite files (none on PostgreSQL)."""
    return sqlite_files(keystore)


def create_keystore_tables() -> None:
    with keystore.connection_context():
        keystore.create_tables([SubjectKey], safe=True)


def put_key(pseudonym: str, wrapped: str, now: datetime) -> str:
    """Store a subject's wrapped key unless one exists; return the key in force."""
    with keystore.atomic():
        existing = SubjectKey.get_or_none(SubjectKey.pseudonym == pseudonym)
        if existing is not None:
            return str(existing.wrapped_key)
        SubjectKey.create(pseudonym=pseudonym, wrapped_key=wrapped, created_at=now)
    return wrapped


def wrapped_key(pseudonym: str) -> str | None:
    found = SubjectKey.get_or_none(SubjectKey.pseudonym == pseudonym)
    return None if found is None else str(found.wrapped_key)


def key_fingerprint(wrapped: str) -> str:
    """The SHA-256 of a wrapped key: it names that key and cannot open anything."""
    return sha256_hex(wrapped.encode())


def destroy_key(pseudonym: str, fingerprint: str) -> bool:
    """Destroy the subject's key if it is the one with this fingerprint; True if it was there.

    A key with another fingerprint is a newer one, created for the pseudonym after the erasure
    that ordered this destruction, and stays.
    """
    found = wrapped_key(pseudonym)
    if found is None or key_fingerprint(found) != fingerprint:
        return False
    # Compared again in the DELETE itself, so a key replaced meanwhile is never the one deleted.
    deleted: int = (
        SubjectKey.delete()
        .where((SubjectKey.pseudonym == pseudonym) & (SubjectKey.wrapped_key == found))
        .execute()
    )
    if deleted:
        # Freed pages are overwritten (secure_delete); folding the WAL removes the key's old pages.
        fold_wal(keystore)
    return deleted > 0
