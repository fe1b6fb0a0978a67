"""Schema step 7: the consent record's TCF columns, added to a version 6 database in place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask

from gateway import keyring
from gateway.crypto import canonical_json, verify_signature
from gateway.store.db import database
from gateway.store.migrations import LATEST, current_version, upgrade
from tests.conftest import Caller
from tests.store.test_migrations import introspect, stored_rows
from tests.stores import raw
from tests.tcf_strings import tc_string

TCF_COLUMNS = (
    "tcf_cmp_id",
    "tcf_vendor_list_version",
    "tcf_policy_version",
    "tcf_last_updated",
    "tcf_sha256",
)


def as_version_6(app: Flask) -> None:
    """The consent record as schema version 6 made it: no TCF columns."""
    with raw(app.config) as db:
        for column in TCF_COLUMNS:
            db.execute(f"ALTER TABLE consent_record DROP COLUMN {column}")
        db.execute("UPDATE schema_version SET version = 6")


def receipts(caller: Caller) -> list[dict[str, Any]]:
    purposes = caller.get("/v1/subjects/alice/consents").get_json()["purposes"]
    return [record["receipt"] for p in purposes for record in p["history"]]


def test_step_7_adds_the_tcf_columns_and_keeps_every_record(app: Flask, admin: Caller) -> None:
    body = {"granted": True, "source": "web_banner", "notice_version": "2026-01"}
    assert admin.put("/v1/subjects/alice/consents/recommendations", body).status_code == 200
    fresh = introspect(app)
    as_version_6(app)
    before = stored_rows(app)["consent_record"]
    assert introspect(app) != fresh

    with app.app_context(), database.connection_context():
        assert upgrade(keyring()) == (6, LATEST)
        assert current_version() == LATEST
        assert upgrade(keyring()) == (LATEST, LATEST)

    assert introspect(app) == fresh
    after = stored_rows(app)["consent_record"]
    assert [{k: v for k, v in row.items() if k not in TCF_COLUMNS} for row in after] == before
    assert all(row[column] is None for row in after for column in TCF_COLUMNS)
    key = admin.get("/v1/keys/signing").get_json()["public_key"]
    [old] = receipts(admin)
    assert "tcf" not in old["payload"]
    assert verify_signature(key, old["signature"], canonical_json(old["payload"]))

    text = tc_string(
        purpose_consents=[5, 6],
        vendor_consents=[755],
        last_updated=datetime.now(UTC) - timedelta(hours=1),
    )
    response = admin.put("/v1/subjects/alice/consents", {"tcf": text})
    assert response.status_code == 200, response.get_json()
    found = {p["purpose"]: p["result"] for p in response.get_json()["purposes"]}
    # the grant above is newer than the string: it stands
    assert found == {"recommendations": "ignored", "ads_personalization": "withdrawn"}
    new = next(r for r in receipts(admin) if "tcf" in r["payload"])
    assert verify_signature(key, new["signature"], canonical_json(new["payload"]))
