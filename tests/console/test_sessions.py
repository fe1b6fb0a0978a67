"""Signing in and out of the console, and the session cookie: who may sign in, what the session
holds, when it ends, how it is signed and how it travels."""

from __future__ import annotations

from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Any

import pytest
import time_machine
from flask import Flask

from gateway import keyring
from gateway.console.access import APP_KEY, WRONG_KEY
from gateway.crypto import Keyring
from gateway.store.clients import revoke_client
from gateway.store.db import database
from tests.conftest import Caller
from tests.console.conftest import (
    CALENDAR,
    COOKIE,
    TOKEN,
    Browser,
    audit_entries,
    name_of,
    text,
)


def set_cookie(response: Any) -> SimpleCookie:
    """The session cookie a response sets, with its attributes."""
    headers = [v for v in response.headers.getlist("Set-Cookie") if v.startswith(f"{COOKIE}=")]
    assert len(headers) == 1, response.headers.getlist("Set-Cookie")
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(headers[0])
    return cookie


def stored_session(app: Flask, browser: Browser) -> dict[str, Any]:
    """What the browser's session cookie holds, read with the app's own signing key."""
    with app.test_request_context("/console/"):
        serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
        found: dict[str, Any] = serializer.loads(browser.cookie().value)
        return found


def test_the_sign_in_page_is_a_form_with_a_password_field(browser: Browser) -> None:
    page = browser.get("/console/sign-in")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = text(page)
    assert 'id="sign-in-form"' in html and 'method="post"' in html
    assert 'id="key"' in html and 'type="password"' in html
    assert 'name="csrf_token"' in html


@pytest.mark.parametrize("role", ["auditor", "admin"])
def test_an_auditor_or_admin_key_signs_in(
    app: Flask, browser: Browser, new_caller: Any, role: str
) -> None:
    caller = new_caller(role)
    name = name_of(app, caller)
    assert not browser.signed_in()
    response = browser.sign_in(caller.key)
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/"
    overview = browser.get("/console/")
    assert overview.status_code == 200
    assert f'<span id="signed-in-as">{name} ' in text(overview)
    (entry,) = audit_entries(app, action="console.sign_in")
    assert (entry["actor"], entry["outcome"], entry["fields"]) == (
        name,
        "signed_in",
        {"role": role},
    )
    assert entry["request_id"] == response.headers["X-Request-Id"]
    assert all(caller.key not in str(e) for e in audit_entries(app))


@pytest.mark.parametrize(
    "key", ["gwk_" + "x" * 43, "not-a-key", "gwk_", " ", "gwk_\ufffd"], ids=lambda k: repr(k)
)
def test_a_wrong_key_is_401_and_signs_nobody_in(app: Flask, browser: Browser, key: str) -> None:
    response = browser.sign_in(key)
    assert response.status_code == 401
    assert WRONG_KEY in text(response)
    assert 'id="sign-in-form"' in text(response)
    assert not browser.signed_in()
    assert audit_entries(app, action="console.sign_in") == []


def test_a_revoked_key_reads_exactly_as_an_unknown_one(
    app: Flask, browser: Browser, auditor: Caller
) -> None:
    """Nothing tells whether a key named a client: a revoked one is refused word for word
    as a key that never existed."""
    with app.app_context(), database.connection_context():
        revoke_client(name_of(app, auditor), CALENDAR)
    revoked = browser.sign_in(auditor.key)
    unknown = browser.sign_in("gwk_" + "y" * 43)
    assert revoked.status_code == unknown.status_code == 401

    def page(response: Any) -> str:
        return TOKEN.sub("", text(response))

    assert page(revoked) == page(unknown)


def test_an_app_key_is_refused_with_403_and_audited(
    app: Flask, browser: Browser, shop: Caller
) -> None:
    response = browser.sign_in(shop.key)
    assert response.status_code == 403
    assert APP_KEY in text(response)
    assert not browser.signed_in()
    (entry,) = audit_entries(app, action="console.sign_in")
    assert entry["actor"] == name_of(app, shop)
    assert (entry["outcome"], entry["reasons"]) == ("refused", ["role_not_allowed"])
    assert entry["fields"] == {"role": "app"}


def test_a_revoked_client_is_signed_out_at_its_next_request(
    app: Flask, as_auditor: Browser, auditor: Caller, runner: Any
) -> None:
    assert as_auditor.signed_in()
    name = name_of(app, auditor)
    assert runner.invoke(args=["clients", "revoke", name]).exit_code == 0
    response = as_auditor.get("/console/audit")
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in"
    page = as_auditor.get("/console/sign-in")
    assert "Your client was revoked, so you were signed out." in text(page)
    assert not as_auditor.signed_in()
    (entry,) = audit_entries(app, action="console.sign_out")
    assert (entry["actor"], entry["outcome"]) == (name, "revoked")


def test_a_session_unused_for_the_idle_time_is_signed_out(
    app: Flask, as_auditor: Browser, auditor: Caller
) -> None:
    with time_machine.travel(CALENDAR + timedelta(minutes=14)):
        assert as_auditor.get("/console/audit").status_code == 200
    with time_machine.travel(CALENDAR + timedelta(minutes=28)):  # 14 minutes after that use
        assert as_auditor.get("/console/policies").status_code == 200
    with time_machine.travel(CALENDAR + timedelta(minutes=43, seconds=30)):
        response = as_auditor.get("/console/policies")
        assert response.status_code == 303
        page = as_auditor.get("/console/sign-in")
        assert "signed out after 15 minutes without activity" in text(page)
        assert not as_auditor.signed_in()
    (entry,) = audit_entries(app, action="console.sign_out")
    assert (entry["actor"], entry["outcome"]) == (name_of(app, auditor), "expired")


def test_the_idle_time_is_configurable(make_app: Any, new_caller: Any) -> None:
    app = make_app(CONSOLE_IDLE_MINUTES=2)
    browser = Browser(app)
    assert browser.sign_in(new_caller("admin").key).status_code == 303
    with time_machine.travel(CALENDAR + timedelta(minutes=1, seconds=50)):
        assert browser.signed_in()
    with time_machine.travel(CALENDAR + timedelta(minutes=4)):
        assert not browser.signed_in()


def test_signing_out_ends_the_session_and_is_audited(
    app: Flask, as_admin: Browser, admin: Caller
) -> None:
    response = as_admin.post("/console/sign-out")
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in"
    assert "You signed out." in text(as_admin.get("/console/sign-in"))
    assert not as_admin.signed_in()
    (entry,) = audit_entries(app, action="console.sign_out")
    assert (entry["actor"], entry["outcome"]) == (name_of(app, admin), "signed_out")
    assert entry["request_id"] == response.headers["X-Request-Id"]


def test_the_session_holds_the_client_and_never_the_key(
    app: Flask, as_admin: Browser, admin: Caller
) -> None:
    stored = stored_session(app, as_admin)
    assert stored["client"] == name_of(app, admin)
    assert set(stored) <= {"client_id", "client", "seen", "csrf_token", "_flashes"}
    assert admin.key not in as_admin.cookie().value
    assert admin.key not in str(stored)


def test_signing_in_starts_a_fresh_session(app: Flask, browser: Browser, admin: Caller) -> None:
    """Whatever the session held before (a value planted by someone else) does not survive."""
    browser.get("/console/sign-in")
    with browser.http.session_transaction("/console/") as planted:
        planted["planted"] = "by someone else"
    before = stored_session(app, browser)
    assert before["planted"] == "by someone else"
    assert browser.sign_in(admin.key).status_code == 303
    after = stored_session(app, browser)
    assert "planted" not in after
    assert after.get("csrf_token") != before.get("csrf_token")


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_the_cookie_is_httponly_strict_and_secure_over_https(
    app: Flask, admin: Caller, https: bool
) -> None:
    response = Browser(app, https=https).sign_in(admin.key)
    morsel = set_cookie(response)[COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/console"
    assert bool(morsel["secure"]) is https
    assert not morsel["expires"]  # ends with the browser, if not before


def test_the_cookie_is_secure_over_http_when_configured(make_app: Any, new_caller: Any) -> None:
    app = make_app(CONSOLE_COOKIE_SECURE=True)
    response = Browser(app).sign_in(new_caller("admin").key)
    assert set_cookie(response)[COOKIE]["secure"] is True


def test_the_api_neither_reads_nor_sets_the_cookie(as_admin: Browser, admin: Caller) -> None:
    response = as_admin.get("/v1/policies")
    assert response.status_code == 401  # the console's cookie is no credential here
    assert response.mimetype == "application/problem+json"
    assert "Set-Cookie" not in response.headers
    with_key = admin.get("/v1/policies")
    assert with_key.status_code == 200 and "Set-Cookie" not in with_key.headers


def test_the_signing_key_is_derived_from_the_keyring_and_shared(
    app: Flask, make_app: Any, as_admin: Browser
) -> None:
    """Another process on the same instance (a worker, a restart) accepts the session; an app
    with a SECRET_KEY of its own does not."""
    other = Browser(make_app())
    other.http.set_cookie(COOKIE, as_admin.cookie().value, domain="localhost", path="/console")
    assert other.signed_in()
    with app.app_context():
        assert app.secret_key == keyring().derived_secret("console session")
    configured = Browser(make_app(SECRET_KEY="configured-elsewhere"))
    configured.http.set_cookie(COOKIE, as_admin.cookie().value, domain="localhost", path="/console")
    assert not configured.signed_in()


def test_derived_secrets_differ_per_use_and_per_keyring() -> None:
    ring, other = Keyring.generate(), Keyring.generate()
    assert len(ring.derived_secret("console session")) == 32
    assert ring.derived_secret("console session") == ring.derived_secret("console session")
    assert ring.derived_secret("console session") != ring.derived_secret("another use")
    assert ring.derived_secret("console session") != other.derived_secret("console session")
    assert ring.hmac_key not in (ring.derived_secret("console session"), ring.kek)


def test_sign_in_attempts_are_limited_per_address(make_app: Any, new_caller: Any) -> None:
    app = make_app(CONSOLE_SIGN_IN_LIMIT="3 per minute")
    key = new_caller("admin").key
    guesser = Browser(app)
    for _ in range(3):
        assert guesser.sign_in("gwk_" + "z" * 43).status_code == 401
    refused = guesser.sign_in(key)  # even the right key, until the window has passed
    assert refused.status_code == 429
    assert refused.mimetype == "text/html"
    assert int(refused.headers["Retry-After"]) >= 1
    assert "Too many attempts" in text(refused)
    elsewhere = Browser(app).sign_in(key, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert elsewhere.status_code == 303
    with time_machine.travel(CALENDAR + timedelta(minutes=2)):
        assert guesser.sign_in(key).status_code == 303


def test_every_page_sends_whoever_is_not_signed_in_to_sign_in(browser: Browser) -> None:
    for path in ("/console/", "/console/audit", "/console/subjects/x", "/console/clients"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["Location"] == "/console/sign-in"
    assert "Sign in to continue." in text(browser.get("/console/sign-in"))


def test_a_signed_in_visit_to_the_sign_in_page_goes_to_the_overview(as_auditor: Browser) -> None:
    response = as_auditor.get("/console/sign-in")
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/"
