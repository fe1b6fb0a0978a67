"""Every console form needs the CSRF token of its own session: without it, or with a wrong or
another session's, the post is a 400 page and nothing happens. The /v1 API takes no token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from gateway.console import CSRF_MESSAGE
from gateway.store.clients import authenticate
from gateway.store.db import database
from gateway.store.models import Attribute, Event, Subject
from tests.conftest import Caller
from tests.console.conftest import (
    CANDIDATES,
    SUBJECT,
    Browser,
    audit_entries,
    name_of,
    seed_subject,
    text,
)

Form = Callable[[Flask, Caller, Caller], tuple[str, dict[str, str]]]


def _state(app: Flask, admin: Caller, other: Caller) -> dict[str, Any]:
    """Everything a form could change: the log, the held data, purges, the clients' keys."""
    with app.app_context(), database.connection_context():
        held = {model.__name__: model.select().count() for model in (Subject, Attribute, Event)}
        other_key_works = authenticate(other.key) is not None
    return {
        "entries": len(audit_entries(app)),
        "held": held,
        "runs": admin.get("/v1/purges").get_json()["runs"],
        "other_key_works": other_key_works,
    }


FORMS: dict[str, Form] = {
    "sign-in": lambda app, admin, other: ("/console/sign-in", {"key": other.key}),
    "sign-out": lambda app, admin, other: ("/console/sign-out", {}),
    "verify": lambda app, admin, other: ("/console/audit/verify", {}),
    "erase": lambda app, admin, other: (f"/console/subjects/{SUBJECT}/erase", {"confirm": SUBJECT}),
    "purge": lambda app, admin, other: ("/console/purges", {}),
    "revoke": lambda app, admin, other: (
        f"/console/clients/{name_of(app, other)}/revoke",
        {"confirm": name_of(app, other)},
    ),
}


@pytest.mark.parametrize("kind", ["missing", "wrong", "another session's"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_form_without_its_sessions_token_is_refused_and_changes_nothing(
    app: Flask,
    as_admin: Browser,
    admin: Caller,
    new_caller: Any,
    shop: Caller,
    form: str,
    kind: str,
) -> None:
    other = new_caller("admin")
    seed_subject(shop, admin)
    somebody_else = Browser(app)
    assert somebody_else.sign_in(other.key).status_code == 303
    token = {"missing": "", "wrong": "not-a-token", "another session's": somebody_else.token()}
    path, data = FORMS[form](app, admin, other)
    before = _state(app, admin, other)
    response = as_admin.post(path, data, token=token[kind])
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert CSRF_MESSAGE in text(response)
    assert "Content-Security-Policy" in response.headers
    assert _state(app, admin, other) == before
    assert as_admin.signed_in()  # not signed out, not signed in as `other`
    assert f'<span id="signed-in-as">{name_of(app, admin)} ' in text(as_admin.get("/console/"))


def test_the_same_forms_with_the_token_do_act(
    app: Flask, as_admin: Browser, admin: Caller, new_caller: Any
) -> None:
    """The refusals above are for want of a token: with one, a form works."""
    other = new_caller("auditor")
    path, data = FORMS["revoke"](app, admin, other)
    assert as_admin.post(path, data).status_code == 303
    with app.app_context(), database.connection_context():
        assert authenticate(other.key) is None


def test_the_api_needs_no_token_for_any_method(admin: Caller, shop: Caller) -> None:
    consent = {"granted": True, "source": "web_banner", "notice_version": "2027-01"}
    assert shop.put(f"/v1/subjects/{SUBJECT}/consents/recommendations", consent).status_code == 200
    body = {"subject_id": SUBJECT, "purpose": "recommendations", "candidates": CANDIDATES}
    assert shop.post("/v1/personalize", body).status_code == 200
    attributes = {"database": "crm", "attributes": {"shoe_size": 40}}
    assert admin.patch(f"/v1/subjects/{SUBJECT}/attributes", attributes).status_code == 200
    assert admin.post("/v1/purges", {"dry_run": True}).status_code == 200
    assert admin.post("/v1/audit/checkpoints").status_code == 201
    assert admin.request("DELETE", f"/v1/subjects/{SUBJECT}").status_code == 200
