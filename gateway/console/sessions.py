"""Console sessions: who is signed in, for how long, and the cookie that says so.

    begin_session(client)        # at sign-in: a fresh session holding the client's id and name
    client = resume()            # each request: the client reloaded, or None (signed out)
    end_session(name, "signed_out", "Signed out.")

The session is Flask's signed cookie, only under /console (the API never reads or sets it),
HttpOnly, SameSite=Strict and Secure whenever the request came over HTTPS (or always, with
CONSOLE_COOKIE_SECURE). It holds the client's id and name, when it was last used, its CSRF token
and pending messages; never a key. Every request reloads the client, so a revoked client is
signed out at once, and a session unused for CONSOLE_IDLE_MINUTES is signed out when it comes
back. Its signing key is SECRET_KEY, or one derived from the keyring: the same in every worker
and across restarts, with nothing for an operator to set up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, current_app, flash, g, has_request_context, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.crypto import KeyringError
from gateway.store.clients import Role
from gateway.store.db import write_transaction
from gateway.store.models import ApiClient

CONSOLE_PATH = "/console"
CONSOLE_ROLES = (Role.AUDITOR, Role.ADMIN)
SECRET_USE = "console session"


def under_console(path: str) -> bool:
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


def secret_key(app: Flask) -> str | bytes:
    """The app's SECRET_KEY; without one configured, derived from the keyring (once)."""
    if not app.secret_key:
        from gateway import keyring

        app.secret_key = keyring().derived_secret(SECRET_USE)
    return app.secret_key


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, opened for console paths only, signed with `secret_key`,
    Secure per request."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not under_console(request.path):
            return None  # a null session: the API takes no cookies
        try:
            secret_key(app)
        except KeyringError:
            return None  # the console's guard raises it again, as a 503 page
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        forced = bool(app.config["CONSOLE_COOKIE_SECURE"])
        return forced or (has_request_context() and request.is_secure)


def idle_minutes() -> float:
    return float(current_app.config["CONSOLE_IDLE_MINUTES"])


def audit_session(
    action: Action, name: str, outcome: str, reasons: Sequence[str] = (), **fields: Any
) -> None:
    """Append a console.sign_in or console.sign_out entry with the client's name as actor."""
    from gateway import policies

    record = AuditRecord(
        actor=name,
        action=action,
        policy_hash=policies().hash,
        outcome=outcome,
        reasons=tuple(reasons),
        fields=fields,
        request_id=g.get("request_id"),
    )
    with write_transaction():
        audit(record, datetime.now(UTC))


def begin_session(client: ApiClient) -> None:
    """Sign `client` in: a fresh session (nothing of the one before is kept), audited."""
    audit_session(Action.CONSOLE_SIGN_IN, client.name, "signed_in", role=client.role)
    session.clear()
    session["client_id"] = client.get_id()
    session["client"] = client.name
    session["seen"] = int(time.time())


def end_session(name: str, outcome: str, message: str) -> None:
    """Sign the session's client out (`signed_out`, `expired`, `revoked`), audited, and leave
    `message` for the sign-in page."""
    audit_session(Action.CONSOLE_SIGN_OUT, name, outcome)
    session.clear()
    flash(message, "warning" if outcome != "signed_out" else "info")


def _still_allowed(client: ApiClient | None, client_id: object) -> bool:
    return (
        client is not None
        and client.get_id() == client_id
        and client.revoked_at is None
        and client.role in CONSOLE_ROLES
    )


def resume() -> ApiClient | None:
    """The client signed in to this session, reloaded; None if nobody is, or if the session
    ends now (unused too long, or the client revoked), with a message saying why."""
    name = session.get("client")
    if not isinstance(name, str):
        return None
    now = time.time()
    minutes = idle_minutes()
    if now - float(session.get("seen", 0)) > minutes * 60:
        end_session(
            name, "expired", f"You were signed out after {minutes:g} minutes without activity."
        )
        return None
    client = ApiClient.get_or_none(ApiClient.name == name)
    if not _still_allowed(client, session.get("client_id")):
        end_session(name, "revoked", "Your client was revoked, so you were signed out.")
        return None
    session["seen"] = int(now)
    return client
