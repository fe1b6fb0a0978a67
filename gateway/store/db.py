"""Database binding from a URL, per-request connections and write transactions.

bind("sqlite:///instance/gateway.db")       # or postgresql://user@host/db
with write_transaction():                   # serialized writer (SQLite: BEGIN IMMEDIATE)
    ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask
from peewee import Database, DatabaseProxy, SqliteDatabase
from playhouse.db_url import connect

database = DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "busy_timeout": 10_000,
    "synchronous": "normal",
    # deleted rows (purges, erasures) are zeroed on disk, not left readable in free pages
    "secure_delete": 1,
}


def bind(url: str) -> Database:
    """Point every model at the database named by `url` (no connection is opened)."""
    options = {"pragmas": SQLITE_PRAGMAS} if url.startswith("sqlite") else {}
    db = connect(url, **options)
    database.initialize(db)
    return db


@contextmanager
def write_transaction() -> Iterator[None]:
    """A transaction that takes the write lock at its start, so writers queue instead of failing."""
    if isinstance(database.obj, SqliteDatabase):
        with database.atomic("IMMEDIATE"):
            yield
    else:
        with database.atomic():
            yield


def init_app(app: Flask) -> None:
    """Open a connection per request and close it after, whatever happened."""

    @app.before_request
    def _connect() -> None:
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        if not database.is_closed():
            database.close()
