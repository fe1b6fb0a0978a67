"""The databases under test: SQLite files in the test's instance folder, or PostgreSQL.

The suite runs on SQLite unless GATEWAY_DATABASE_URL names a PostgreSQL database when pytest
starts (`make test` runs it both ways). On PostgreSQL every test gets a schema of its own in that
database and another in the keystore database (GATEWAY_KEYSTORE_URL, by default the same server's
`<name>_keys`), so tests stay as isolated as with a fresh SQLite file each.

    store = new_store(home)                  # the settings of a fresh, empty pair of databases
    make_app(**store)                        # ... which an app then uses
    with raw(app) as db:                     # plain SQL with ? placeholders on either backend
        db.execute("UPDATE audit_entry SET actor = ? WHERE seq = ?", ("intruder", 3))
    copy_rows(template_app.config, app.config)   # every row of one instance into another
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
from playhouse.db_url import parse

from gateway.store.db import database
from gateway.store.models import TABLES, Event

SERVER_URL = os.environ.get("GATEWAY_DATABASE_URL", "")
POSTGRES = SERVER_URL.startswith(("postgres://", "postgresql://"))
if SERVER_URL and not POSTGRES:
    raise RuntimeError(f"GATEWAY_DATABASE_URL for the tests must name PostgreSQL: {SERVER_URL!r}")


def _keystore_server_url() -> str:
    given = os.environ.get("GATEWAY_KEYSTORE_URL", "")
    if given:
        return given
    parts = urlsplit(SERVER_URL)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_keys"))


KEYSTORE_SERVER_URL = _keystore_server_url() if POSTGRES else ""
BACKEND = "postgresql" if POSTGRES else "sqlite"

# The order rows can be copied in: referenced tables before the tables that reference them.
ORDER = [model._meta.table_name for model in TABLES]  # type: ignore[attr-defined]

Settings = dict[str, str]


def _with_schema(url: str, schema: str) -> str:
    """The server URL whose connections see only `schema` (search_path set by libpq options)."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode({"options": f"-csearch_path={schema}"})]))
    return urlunsplit(parts._replace(query=query))


def _pg_connect(url: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    params = parse(url)
    params["dbname"] = params.pop("database")
    return psycopg.connect(autocommit=autocommit, **params)


def _ensure_database(url: str) -> None:
    name = parse(url)["database"]
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres", query=""))
    with closing(_pg_connect(admin, autocommit=True)) as connection:
        if not connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def prepare_server() -> None:
    """Once per session on PostgreSQL: the keystore database exists."""
    if POSTGRES:
        _ensure_database(KEYSTORE_SERVER_URL)


def new_store(home: Path, sqlite: bool = False) -> Settings:
    """Settings of a fresh pair of databases (main and keystore) for an app with this home;
    `sqlite` asks for SQLite files whatever the backend under test."""
    if sqlite or not POSTGRES:
        return {
            "DATABASE_URL": f"sqlite:///{home / 'gateway.db'}",
            "KEYSTORE_URL": f"sqlite:///{home / 'keys.db'}",
        }
    schema = f"t_{uuid.uuid4().hex[:16]}"
    for server in (SERVER_URL, KEYSTORE_SERVER_URL):
        with closing(_pg_connect(server, autocommit=True)) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
    return {
        "DATABASE_URL": _with_schema(SERVER_URL, schema),
        "KEYSTORE_URL": _with_schema(KEYSTORE_SERVER_URL, schema),
    }


def drop_store(settings: Settings) -> None:
    """Remove a PostgreSQL store's schemas (SQLite files go with the test's folder)."""
    if settings["DATABASE_URL"].startswith("sqlite"):
        return
    for url in (settings["DATABASE_URL"], settings["KEYSTORE_URL"]):
        schema = parse(url)["options"].split("=", 1)[1]
        with closing(_pg_connect(url, autocommit=True)) as connection:
            connection.execute("SET lock_timeout = '10s'")
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Row(tuple):  # type: ignore[type-arg]
    """A result row read by position or by column name, like sqlite3.Row on both backends."""

    names: Sequence[str]

    def __new__(cls, names: Sequence[str], values: Sequence[Any]) -> Row:
        row = super().__new__(cls, values)
        row.names = names
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return super().__getitem__(list(self.names).index(key))
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self.names)


def _pg_rows(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = [column.name for column in cursor.description or ()]
    return lambda values: Row(names, values)


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class Raw:
    """A plain DB-API connection beside the app's own. SQL is written as for sqlite3, with ? or
    :name placeholders, on both backends."""

    def __init__(self, connection: Any, postgres: bool) -> None:
        self.connection, self.postgres = connection, postgres

    def _sql(self, sql: str) -> str:
        return _NAMED.sub(r"%(\1)s", sql.replace("?", "%s")) if self.postgres else sql

    def execute(self, sql: str, params: Any = ()) -> Any:
        if not isinstance(params, dict):
            params = tuple(params)
        return self.connection.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            with self.connection.cursor() as cursor:
                cursor.executemany(self._sql(sql), rows)
        else:
            self.connection.executemany(sql, rows)

    def tables(self) -> list[str]:
        if self.postgres:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        found = [row[0] for row in self.execute(sql).fetchall()]
        return sorted(found, key=lambda name: (ORDER.index(name) if name in ORDER else -1, name))


@contextmanager
def connect(url: str) -> Iterator[Raw]:
    """A raw connection to the database at `url`, committed on a clean exit, else rolled back."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path, timeout=30)) as connection:
            connection.row_factory = sqlite3.Row
            with connection:
                yield Raw(connection, postgres=False)
        return
    with closing(_pg_connect(url)) as connection:
        connection.row_factory = _pg_rows
        with connection.transaction():
            yield Raw(connection, postgres=True)


@contextmanager
def raw(config: Any, store: str = "DATABASE_URL") -> Iterator[Raw]:
    """A raw connection to an app's database (or its keystore: store="KEYSTORE_URL")."""
    with connect(config[store]) as connection:
        yield connection


def count_rows(config: Any, sql: str, params: Sequence[Any] = ()) -> int:
    """The single number a `SELECT count(*) ...` gives on an app's database."""
    with raw(config) as db:
        return int(db.execute(sql, params).fetchone()[0])


def copy_rows(source: Any, target: Any) -> None:
    """Replace every row of one instance's databases by another's (same schema version; the
    tallies as counted from the events); PostgreSQL sequences then continue after the copied
    ids."""
    for store in ("DATABASE_URL", "KEYSTORE_URL"):
        with raw(source, store) as src, raw(target, store) as dst:
            for table in reversed(dst.tables()):
                dst.execute(f"DELETE FROM {table}")
            # the target's triggers count event_tally again from the events copied
            for table in (table for table in src.tables() if table != "event_tally"):
                cursor = src.execute(f"SELECT * FROM {table}")
                names = [column[0] for column in cursor.description]
                rows = [tuple(row) for row in cursor.fetchall()]
                if not rows:
                    continue
                marks = ", ".join("?" for _ in names)
                dst.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", rows)
                if dst.postgres and "id" in names:
                    dst.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) "
                        f"FROM {table} WHERE pg_get_serial_sequence('{table}', 'id') IS NOT NULL"
                    )


# The columns of an event row, in the order `insert_events` takes them.
EVENT_FIELDS: list[Any] = [
    Event.subject,
    Event.database,
    Event.type,
    Event.item_id,
    Event.item_category,
    Event.sealed,
    Event.at,
    Event.received_at,
]


def insert_events(rows: Sequence[Sequence[Any]]) -> None:
    """Insert many event rows (values in EVENT_FIELDS order) on the app's own connection, each
    value as the model stores it; peewee's SQL builder takes seconds over this many rows."""
    columns = ", ".join(f'"{field.column_name}"' for field in EVENT_FIELDS)
    marks = ", ".join(database.param for _ in EVENT_FIELDS)
    values = [tuple(f.db_value(v) for f, v in zip(EVENT_FIELDS, row, strict=True)) for row in rows]
    cursor = database.cursor()
    cursor.executemany(f'INSERT INTO "event" ({columns}) VALUES ({marks})', values)
    cursor.close()
