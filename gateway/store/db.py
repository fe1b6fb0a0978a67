"""Database binding from a URL, per-request connections and write transactions.

bind("sqlite:///instance/gateway.db")       # or postgresql://user@host/db
with write_transaction():                   # one writer at a time, across processes
    ...
with write_transaction(serialize=False):    # PostgreSQL: alongside other such writers
    lock_subject(pseudonym, shared=True)    # ... ordered only against this subject's changes
    after_commit(callback)                  # runs once the transaction has committed

Writers are serialized by the database itself, never by a process lock: SQLite's BEGIN IMMEDIATE
takes the file's write lock, and on PostgreSQL a write transaction first takes one
transaction-scoped advisory lock. Reads take no lock. Under READ COMMITTED each statement after
that lock sees every writer that went before. The hot paths (decisions, audit sequencing) opt out
of that lock on PostgreSQL: they take only the locks their own order needs (a subject's lock, the
sequencer's), so the fleet's commits overlap instead of queueing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from flask import Flask
from peewee import (
    Database,
    DatabaseProxy,
    OperationalError,
    PeeweeException,
    PostgresqlDatabase,
    SqliteDatabase,
)
from playhouse.db_url import connect, parse
from playhouse.pool import PooledDatabase, PooledSqliteDatabase
from psycopg.pq import TransactionStatus

from gateway.errors import ConfigurationError, DatabaseUnavailable

database = DatabaseProxy()
log = logging.getLogger("gateway.store")

# The advisory lock of the gateway's writers: this fixed number and the schema in use, so that
# gateways in different schemas of one database do not wait for each other.
WRITER_LOCK = 0x67617465
# Callbacks to run once the outermost write transaction of this context has committed.
_AFTER_COMMIT: ContextVar[list[Callable[[], object]] | None] = ContextVar(
    "after_commit", default=None
)

BUSY_TIMEOUT_MS = 10_000  # how long a writer waits for the write lock
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "busy_timeout": BUSY_TIMEOUT_MS,
    "synchronous": "normal",
    # deleted rows (purges, erasures) are zeroed on disk, not left readable in free pages
    "secure_delete": 1,
}


SCHEMES = ("sqlite", "postgres", "postgresql")


class UnsupportedDatabase(ConfigurationError):
    """A database URL names neither SQLite nor PostgreSQL."""

    code = "unsupported_database"


def create_owner_only(path: str) -> None:
    """Create an empty file at `path`, readable and writable by its owner only, unless one is
    there; SQLite reports any other reason it cannot open it."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return


class _OwnerOnlySqliteDatabase(SqliteDatabase):
    def _connect(self) -> Any:
        # SQLite would create the file 0644 (less the umask) and gives its write-ahead log and
        # shared-memory files the file's own mode: created 0600 first, all three stay private.
        create_owner_only(self.database)
        return super()._connect()  # type: ignore[misc]  # peewee's own, not in its stubs


class OwnerOnlySqliteDatabase(PooledSqliteDatabase, _OwnerOnlySqliteDatabase):
    """A pooled SQLite database whose files only their owner can read (the pool comes first in
    the method order: the file is checked when it opens a connection, not when it lends one)."""


def open_database(url: str) -> Database:
    """The database at `url`, SQLite or PostgreSQL, behind a connection pool.

    Requests take a connection from the pool and give it back, so neither PostgreSQL's connection
    set-up nor SQLite's checkpoint when its last connection closes is paid per request. Pools
    are per process: `close_pools()` empties them before gunicorn forks its workers.
    """
    scheme = url.split(":", 1)[0].removesuffix("+pool")
    if scheme not in SCHEMES:
        raise UnsupportedDatabase(
            f"unsupported database URL {url.split(':', 1)[0]}://: use sqlite or postgresql "
            "(GATEWAY_DATABASE_URL, GATEWAY_KEYSTORE_URL)"
        )
    options: dict[str, Any] = {"max_connections": None, "stale_timeout": 300}
    if scheme == "sqlite":
        # a pooled connection may serve another thread later (never two at once)
        options.update(pragmas=SQLITE_PRAGMAS, check_same_thread=False)
        return OwnerOnlySqliteDatabase(**{**parse(url), **options})
    return connect(url.replace(f"{scheme}://", f"{scheme}+pool://", 1), **options)


def bind(url: str) -> Database:
    """Point every model at the database named by `url` (no connection is opened); the
    connections to the database bound before are closed."""
    db = open_database(url)
    close_pool(database)
    database.initialize(db)
    return db


def close_pool(db: Database | DatabaseProxy) -> None:
    """Close every connection `db` holds, in use by this thread or idle in its pool."""
    target = db.obj if isinstance(db, DatabaseProxy) else db
    if target is None:
        return
    if not target.is_closed():
        target.close()
    if isinstance(target, PooledDatabase):
        target.close_all()


def _begin_sqlite_write(db: Database) -> Any:
    """BEGIN IMMEDIATE, retried every half millisecond while another writer holds the lock.

    SQLite's own busy handler sleeps ever longer (up to 100 ms) between tries, so a waiting
    request keeps missing the short gaps a purge leaves between its batches. Polling finds them.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    db.execute_sql("PRAGMA busy_timeout = 0")
    try:
        while True:
            transaction = db.atomic("IMMEDIATE")
            try:
                transaction.__enter__()
                return transaction
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.0005)
    finally:
        db.execute_sql(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def data_version() -> int | None:
    """A number that changes whenever another connection commits to the database (SQLite's
    `data_version`), so that a long writer can tell whether others are writing; None on
    PostgreSQL, where writers waiting for a lock are queued by the server."""
    db = database.obj
    if not isinstance(db, SqliteDatabase):
        return None
    return int(db.execute_sql("PRAGMA data_version").fetchone()[0])


@contextmanager
def write_transaction(*, serialize: bool = True) -> Iterator[None]:
    """A transaction that takes the write lock at its start, so writers queue instead of failing.

    With `serialize=False`, on PostgreSQL, it takes no lock: the caller takes the ones it needs.
    SQLite has one write lock, which every write transaction takes either way.
    """
    db = database.obj
    if db.transaction_depth() > 0:  # nested: a savepoint inside the writer's transaction
        with db.atomic():
            yield
        return
    callbacks: list[Callable[[], object]] = []
    token = _AFTER_COMMIT.set(callbacks)
    try:
        if isinstance(db, SqliteDatabase):
            with ExitStack() as stack:
                stack.push(_begin_sqlite_write(db))  # entered: its exit commits or rolls back
                yield
        elif isinstance(db, PostgresqlDatabase):
            with db.atomic():
                if serialize:
                    db.execute_sql(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
                        (WRITER_LOCK,),
                    )
                yield
        else:
            raise RuntimeError(f"unsupported database: {type(db).__name__}")
    finally:
        _AFTER_COMMIT.reset(token)
    for callback in dict.fromkeys(callbacks):  # committed: each distinct callback once
        callback()


def after_commit(callback: Callable[[], object]) -> None:
    """Run `callback` after the current write transaction commits (never if it rolls back).
    Outside `write_transaction()` it is not run: the caller's commit is not ours to watch."""
    callbacks = _AFTER_COMMIT.get()
    if callbacks is not None:
        callbacks.append(callback)


def serializes_writers(db: Database | DatabaseProxy = database) -> bool:
    """Whether every write transaction holds the one write lock (SQLite): then a writer may
    do at once what would otherwise wait for a lock of its own."""
    target = db.obj if isinstance(db, DatabaseProxy) else db
    return isinstance(target, SqliteDatabase)


def try_lock(key: int, *, wait: bool) -> bool:
    """Take the transaction-scoped lock `key` (in this schema) on PostgreSQL, waiting for it or
    not; True once held. On SQLite the write transaction already holds the only lock."""
    db = database.obj
    if not isinstance(db, PostgresqlDatabase):
        return True
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    row = db.execute_sql(
        f"SELECT {function}(%s, hashtext(current_schema()))::text", (key,)
    ).fetchone()
    return wait or row[0] == "true"


def lock_subject(pseudonym: str, *, shared: bool) -> None:
    """Order this transaction against others on the same subject (PostgreSQL; SQLite's writers
    are ordered already): decisions share the lock, consent changes and erasures take it alone,
    so a decision commits before a change it did not see, or sees it."""
    db = database.obj
    if isinstance(db, PostgresqlDatabase):
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        db.execute_sql(
            f"SELECT {function}(hashtextextended(current_schema() || '/' || %s, 0))",
            (pseudonym,),
        )


def sqlite_files(db: Database | DatabaseProxy = database) -> list[Path]:
    """The files of a SQLite database (the database, its WAL and shared-memory files); none
    for PostgreSQL."""
    target = db.obj if isinstance(db, DatabaseProxy) else db
    if not isinstance(target, SqliteDatabase) or target.database in ("", ":memory:"):
        return []
    path = Path(target.database)
    return [path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")]


def fold_wal(db: Database | DatabaseProxy) -> None:
    """On SQLite, copy the write-ahead log into the database file and truncate it, so that no
    old page in the log still holds what was deleted (call outside a transaction).

    Deleted rows are zeroed in the database file (`secure_delete`), but the log keeps the pages
    as they were until it is checkpointed and reset. A reader still using those pages makes the
    checkpoint wait (busy_timeout); if it is still there then, the log is folded at a later
    checkpoint instead, and that is logged.
    """
    target = db.obj if isinstance(db, DatabaseProxy) else db
    if not isinstance(target, SqliteDatabase):
        return
    busy, _, _ = target.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        log.warning("the write-ahead log of %s is in use and was not truncated", target.database)


def stream_rows(query: Any, batch: int = 100) -> Generator[dict[str, Any], None, None]:
    """A large query's rows, in constant client memory, as dicts of the values the driver
    returned (no peewee conversion: for tables of text and integers, such as the audit log).

    SQLite's cursor steps through the result as it is read. psycopg would fetch the whole result
    at once, so on PostgreSQL the rows come through a server-side cursor, `batch` at a time (held
    over commits when no transaction is open, as the server then requires).
    """
    db = database.obj
    sql, params = query.sql()
    if isinstance(db, PostgresqlDatabase):
        connection = db.connection()
        in_transaction = connection.info.transaction_status == TransactionStatus.INTRANS
        cursor = connection.cursor(name=f"stream_{uuid.uuid4().hex}", withhold=not in_transaction)
        cursor.itersize = batch
    else:
        cursor = db.cursor()
    try:
        cursor.execute(sql, params)
        names = [column[0] for column in cursor.description]
        for values in cursor:
            yield dict(zip(names, values, strict=True))
    finally:
        cursor.close()


def unavailable(exc: PeeweeException) -> DatabaseUnavailable:
    """A database driver's error as the error family's DatabaseUnavailable: its first line is for
    operators (clients are told only that the database is unavailable)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    error = DatabaseUnavailable(f"the database cannot be used: {reason}")
    error.__cause__ = exc
    return error


class DatabaseReadOnly(DatabaseUnavailable):
    """The database answers but refuses writes."""

    code = "database_read_only"
    client_message = "The database is read-only."


def check_writable() -> None:
    """Raise DatabaseReadOnly while the database refuses writes, without trying one.

    A write would queue for the writers' lock (behind a purge, say); this reads a setting or
    checks files, so a readiness probe answers at once. PostgreSQL: `transaction_read_only` is
    on (default_transaction_read_only, or a standby). SQLite: this process may not write the
    database file, its WAL or shared-memory file, or their folder (permissions, a read-only
    mount, the immutable flag): SQLite then opens the database read-only, or cannot write it.
    """
    db = database.obj
    if isinstance(db, PostgresqlDatabase):
        if db.execute_sql("SHOW transaction_read_only").fetchone()[0] == "on":
            raise DatabaseReadOnly("the database is read-only: transaction_read_only is on")
    elif isinstance(db, SqliteDatabase):
        unwritable = _unwritable_sqlite_file(db.database)
        if unwritable is not None:
            raise DatabaseReadOnly(f"the database is read-only: {unwritable} is not writable")


def _unwritable_sqlite_file(path: str) -> str | None:
    """The first of a SQLite database's files, or their folder, this process may not write."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    for candidate in (path, f"{path}-wal", f"{path}-shm", folder):
        if os.path.exists(candidate) and not os.access(candidate, os.W_OK):
            return candidate
    return None


def init_app(app: Flask) -> None:
    """Take a pooled connection per request and give it back after, whatever happened."""

    @app.before_request
    def _connect() -> None:
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        if not database.is_closed():
            database.close()
