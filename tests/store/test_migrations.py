"""`gateway init` creates the latest schema, and upgrades an unversioned one without losing data."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from flask import Flask

from gateway import keyring
from gateway.crypto import canonical_json, verify_signature
from gateway.store.db import database
from gateway.store.keystore import wrapped_key
from gateway.store.migrations import LATEST, current_version, upgrade
from tests.conftest import Caller


def test_a_new_database_gets_the_latest_schema_once(app: Flask) -> None:
    with app.app_context(), database.connection_context():
        assert current_version() == LATEST
        assert upgrade(keyring()) == (LATEST, LATEST)


def downgrade_to_unversioned(app: Flask, pseudonym: str) -> str:
    """Rewrite the files into the schema of before versioning: keys in the subject table."""
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
