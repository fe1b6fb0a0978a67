"""Signing in to the console with an API key, and out again.

A key is checked as the API checks it; only auditor and admin clients may sign in. A wrong key
is 401 and an app client's key 403, each with a message that names no client. Attempts are
counted per address (CONSOLE_SIGN_IN_LIMIT). A sign-in, a refused app client and every
sign-out are audited with the client's name as actor; a key that names no client is not (as
no API 401 is): its attempts are limited, and the request log shows them.
"""

from __future__ import annotations

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from gateway.audit.chain import Action
from gateway.console.forms import SignInForm
from gateway.console.sessions import CONSOLE_ROLES, audit_session, begin_session, end_session
from gateway.limits import count_attempt
from gateway.store.clients import authenticate

bp = Blueprint("access", __name__)

WRONG_KEY = "This key was not accepted: it is mistyped, unknown or revoked."
APP_KEY = (
    "This key belongs to an app client. The console is for auditor and admin clients only; "
    "ask an administrator for an auditor key."
)


def _form_page(form: SignInForm, status: int, error: str | None = None) -> tuple[str, int]:
    return render_template("console/sign_in.html", form=form, error=error), status


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response | tuple[str, int]:
    """The sign-in form; on POST, sign the key's client in (an auditor or an admin)."""
    form = SignInForm()
    if request.method == "GET":
        if g.console_client is not None:
            return redirect(url_for("console.overview.show"), 303)
        return _form_page(form, 200)
    count_attempt("console-sign-in", current_app.config["CONSOLE_SIGN_IN_LIMIT"])
    if not form.validate():
        return _form_page(form, 422)
    client = authenticate(form.key.data or "")
    if client is None:
        return _form_page(form, 401, WRONG_KEY)
    if client.role not in CONSOLE_ROLES:
        reasons = ["role_not_allowed"]
        audit_session(Action.CONSOLE_SIGN_IN, client.name, "refused", reasons, role=client.role)
        return _form_page(form, 403, APP_KEY)
    begin_session(client)
    flash(f"Signed in as {client.name} ({client.role}).", "success")
    return redirect(url_for("console.overview.show"), 303)


@bp.post("/sign-out")
def sign_out() -> Response:
    """End the session (the form carries its CSRF token, checked before this runs)."""
    end_session(g.console_client.name, "signed_out", "You signed out.")
    return redirect(url_for("console.access.sign_in"), 303)
