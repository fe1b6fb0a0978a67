"""The compliance console: server-rendered pages for auditor and admin clients at /console/.

    create_app()     # registers it; sign in at /console/sign-in with an auditor or admin key

Every page needs a signed-in client (see sessions.py); admin actions answer 403 to an auditor.
Each action calls the same function as the API view or CLI command that does the same, so it
is audited as there, with the signed-in client as actor and the request's id. Errors are HTML
pages here (the API keeps answering problem+json); every response carries a strict
Content-Security-Policy (no script at all) and is neither framed nor cached.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask import session as cookie_session
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.wrappers import Response

from gateway.api.problems import reported
from gateway.console import access, audit, deliveries, documents, operations, overview, subjects
from gateway.console.sessions import (
    CONSOLE_PATH,
    ConsoleSessionInterface,
    resume,
    secret_key,
)
from gateway.errors import NotFound

console = Blueprint(
    "console",
    __name__,
    url_prefix=CONSOLE_PATH,
    template_folder="templates",
    static_folder="static",
)
for page in (access, overview, audit, subjects, documents, operations, deliveries):
    console.register_blueprint(page.bp)

# Reachable without a signed-in client.
PUBLIC = {"console.static", "console.access.sign_in"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
CSRF_MESSAGE = (
    "The form was not accepted: its security token is missing, wrong or expired. "
    "Nothing was changed. Go back, reload the page and try again."
)


@console.before_request
def _guard() -> Response | None:
    """Reload the signed-in client (or sign an idle or revoked session out), send whoever is
    not signed in to the sign-in page, and check the CSRF token of every form posted."""
    if request.endpoint == "console.static":
        return None
    secret_key(current_app)  # a keyring that cannot be read is a 503 page here
    client = resume()
    g.console_client = client
    if client is None and request.endpoint not in PUBLIC:
        # nothing is done for a request without a client, so it needs no CSRF check
        if "_flashes" not in cookie_session:
            flash("Sign in to continue.", "info")
        return redirect(url_for("console.access.sign_in"), 303)
    if client is not None:
        g.client = client  # the actor of every entry the shared functions append
    current_app.extensions["csrf"].protect()  # POST, PUT, PATCH and DELETE (WTF_CSRF_METHODS)
    return None


@console.after_request
def _security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@console.errorhandler(Exception)
def _error_page(error: Exception) -> tuple[str, int, dict[str, str]]:
    """Any error of a console page as an HTML page with its status (the API's mapping)."""
    mapped = reported(error)
    message = CSRF_MESSAGE if isinstance(error, CSRFError) else None
    page = render_template(
        "console/error.html",
        status=mapped.status,
        title=HTTPStatus(mapped.status).phrase,
        message=message or mapped.client_message or mapped.message,
        errors=mapped.errors,
    )
    return page, mapped.status, mapped.headers


@console.route("/<path:_rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def _unknown(_rest: str) -> Any:
    raise NotFound("There is no such page in the console.")


def init_app(app: Flask) -> None:
    app.session_interface = ConsoleSessionInterface()
    CSRFProtect(app)  # checks only where the console asks it to (WTF_CSRF_CHECK_DEFAULT)
    app.register_blueprint(console)
