"""Erasure is audited first: if the audit entry cannot be written, nothing is erased."""

from __future__ import annotations

from flask import Flask

from gateway import keyring
from gateway.store.db import database
from gateway.store.keystore import wrapped_key
from gateway.store.models import Attribute
from tests.api.test_personalize import break_audit, repair_audit
from tests.conftest import Caller


def test_a_failed_audit_leaves_the_data_and_the_key(app: Flask, admin: Caller) -> None:
    body = {"database": "crm", "attributes": {"email": "e@example.com", "favorite_brand": "acme"}}
    assert admin.patch("/v1/subjects/erin/attributes", body).status_code == 200
    break_audit(app)

    response = admin.request("DELETE", "/v1/subjects/erin")

    assert response.status_code == 503
    assert response.get_json()["code"] == "audit_unavailable"
    with app.app_context(), database.connection_context():
        assert wrapped_key(keyring().pseudonym("erin")) is not None
        assert Attribute.select().count() == 2

    repair_audit(app)
    retried = admin.request("DELETE", "/v1/subjects/erin")

    assert retried.status_code == 200
    assert retried.get_json()["key_destroyed"] is True
    with app.app_context(), database.connection_context():
        assert wrapped_key(keyring().pseudonym("erin")) is None
        assert Attribute.select().count() == 0
