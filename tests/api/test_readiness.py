"""`/readyz` answers 503 while the gateway cannot do its work: a keyring that did not write the
database, a database that refuses writes. It never waits for the writers' lock."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app
from gateway.crypto import Keyring
from gateway.store.db import BUSY_TIMEOUT_MS, WRITER_LOCK
from tests.stores import POSTGRES, connect


def settings_of(app: Flask, **overrides: Any) -> dict[str, Any]:
    """The settings of another app over the same instance, with some of them changed."""
    names = ("TESTING", "HOME", "POLICIES", "REGISTRY", "DATABASE_URL", "KEYSTORE_URL", "KEYRING")
    return {**{name: app.config[name] for name in names}, **overrides}


def test_readyz_refuses_a_keyring_that_did_not_write_the_database(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    assert client.get("/readyz").status_code == 200
    other = tmp_path / "other-keyring.json"
    Keyring.generate().save(other)
    impostor = create_app(settings_of(app, KEYRING=str(other)))

    response = impostor.test_client().get("/readyz")

    assert response.status_code == 503
    body = response.get_json()
    assert body["code"] == "keyring_mismatch"
    assert other.name not in body["detail"]


@contextmanager
def writers_lock_held(app: Flask) -> Iterator[None]:
    """Hold the gateway writers' lock from another connection, as a long purge batch does."""
    url = app.config["DATABASE_URL"]
    with connect(url) as holder:
        if holder.postgres:
            holder.execute(
                "SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))", (WRITER_LOCK,)
            )
            with connect(url) as other:
                taken = other.execute(
                    "SELECT pg_try_advisory_xact_lock(?, hashtext(current_schema()))",
                    (WRITER_LOCK,),
                ).fetchone()[0]
            assert taken is False  # the lock is really held
        else:
            holder.execute("BEGIN IMMEDIATE")
            with connect(url) as other:
                other.execute("PRAGMA busy_timeout = 0")
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
        yield


def test_readyz_does_not_wait_for_the_writers_lock(app: Flask, client: FlaskClient) -> None:
    if POSTGRES:  # a probe that waited for the lock would fail, not hang, the test
        probe = create_app(settings_of(app, DATABASE_URL=with_options(app, "lock_timeout=3s")))
        client = probe.test_client()
    with writers_lock_held(app):
        started = time.monotonic()
        response = client.get("/readyz")
        elapsed = time.monotonic() - started

    assert response.status_code == 200, response.get_json()
    assert elapsed < BUSY_TIMEOUT_MS / 1000 / 4


def with_options(app: Flask, setting: str) -> str:
    """The app's PostgreSQL URL with a setting for its sessions alone (`name=value`)."""
    parts = urlsplit(app.config["DATABASE_URL"])
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} -c{setting}".strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@contextmanager
def made_read_only(path: Path) -> Iterator[None]:
    """`path` read-only for this process until the block ends: its write permission removed or,
    for root, whom permissions do not bind, its immutable flag set."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    mode = path.stat().st_mode
    path.chmod(mode & ~0o222)
    try:
        yield
    finally:
        path.chmod(mode)


def check_sqlite_read_only(app: Flask, client: FlaskClient, target: str) -> None:
    """While the database file or its folder is read-only: 503; after, ready again."""
    database = Path(app.config["HOME"]) / "gateway.db"
    assert client.get("/readyz").status_code == 200
    with made_read_only(database if target == "file" else database.parent):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["code"] == "database_read_only"
    assert client.get("/readyz").status_code == 200


def test_readyz_fails_while_the_database_refuses_writes(app: Flask, client: FlaskClient) -> None:
    """PostgreSQL: sessions read-only by default (as on a standby); SQLite: a read-only file."""
    if not POSTGRES:
        check_sqlite_read_only(app, client, "file")
        return
    # sessions read-only from the start, as every session on a standby is
    url = with_options(app, "default_transaction_read_only=on")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), connect(url) as session:
        session.execute("DELETE FROM lease")  # the setting does make the database read-only
    read_only = create_app(settings_of(app, DATABASE_URL=url))

    response = read_only.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["code"] == "database_read_only"
    writable = create_app(settings_of(app))
    assert writable.test_client().get("/readyz").status_code == 200


@pytest.mark.sqlite
def test_readyz_fails_while_the_sqlite_folder_is_read_only(app: Flask, client: FlaskClient) -> None:
    check_sqlite_read_only(app, client, "folder")
