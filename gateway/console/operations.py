"""Operations in the console: retention purges and API clients.

A purge runs through `purge_now`, as POST /v1/purges and `gateway purge` do (409 while another
runs); a revocation through `revoke_audited`, as `gateway clients revoke` does, each audited
with the signed-in client as actor. Both are for admins; auditors see the history and the list.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from gateway.api.auth import roles
from gateway.audit.clients import revoke_audited
from gateway.console.forms import ConfirmForm, PurgeForm
from gateway.console.sessions import end_session
from gateway.errors import NotFound
from gateway.retention import PurgeBusy, PurgeOutcome, purge_now, recent_runs
from gateway.store.clients import Role, client_purposes, list_clients
from gateway.store.models import ApiClient

bp = Blueprint("operations", __name__)

HISTORY = 50  # runs listed
MISMATCH = "The name typed does not match the client's name: nothing was revoked."


def _purges_page(form: PurgeForm, status: int = 200, error: str | None = None) -> Any:
    page = render_template("console/purges.html", runs=recent_runs(HISTORY), form=form, error=error)
    return page, status


def _purge_summary(outcome: PurgeOutcome) -> str:
    run = outcome.run
    if run.dry_run:
        found = sum(result.found for result in outcome.results)
        return f"Dry run {run.id}: {found} rows would be deleted; nothing was deleted."
    deleted = sum(result.deleted for result in outcome.results)
    return f"Purge run {run.id} finished: {deleted} rows deleted."


@bp.get("/purges")
def purges() -> Any:
    """Past runs, newest first; for admins, the form that runs one."""
    return _purges_page(PurgeForm())


@bp.post("/purges")
@roles(Role.ADMIN)
def run_purge() -> Any:
    """Run a purge (or a dry run) now."""
    form = PurgeForm()
    if not form.validate():
        return _purges_page(form, 422)
    try:
        outcome = purge_now(actor=g.client.name, dry_run=bool(form.dry_run.data))
    except PurgeBusy:
        message = "Another purge is running: nothing was started. Try again when it has finished."
        return _purges_page(form, 409, message)
    flash(_purge_summary(outcome), "success")
    return redirect(url_for("console.operations.purges"), 303)


@bp.get("/clients")
def clients() -> str:
    """Every client: name, role, purposes, created, revoked (never a key or its digest)."""
    listed = [
        {
            "name": c.name,
            "role": c.role,
            "purposes": client_purposes(c),
            "created_at": c.created_at,
            "revoked_at": c.revoked_at,
        }
        for c in list_clients()
    ]
    return render_template("console/clients.html", clients=listed)


def _client(name: str) -> ApiClient:
    found = ApiClient.get_or_none(ApiClient.name == name)
    if found is None:
        raise NotFound(f"There is no client named {name!r}.", {"name": ["No such client."]})
    return found


def _revoke_page(
    client: ApiClient, form: ConfirmForm, status: int, error: str | None = None
) -> Any:
    return render_template("console/revoke.html", client=client, form=form, error=error), status


@bp.route("/clients/<string:name>/revoke", methods=["GET", "POST"])
@roles(Role.ADMIN)
def revoke(name: str) -> Response | Any:
    """Ask for the client's name again; revoke its key only when it matches."""
    client = _client(name)
    form = ConfirmForm()
    if request.method == "GET":
        return _revoke_page(client, form, 200)
    if not form.validate():
        return _revoke_page(client, form, 422)
    if form.confirm.data != client.name:
        return _revoke_page(
            client, form, 422, "The name typed does not match: nothing was revoked."
        )
    changed = revoke_audited(client.name, actor=g.client.name, request_id=g.request_id)
    if client.name == g.client.name:
        end_session(client.name, "revoked", "You revoked your own client, so you were signed out.")
        return redirect(url_for("console.access.sign_in"), 303)
    flash(
        f"Revoked {client.name}." if changed else f"{client.name} was already revoked.", "success"
    )
    return redirect(url_for("console.operations.clients"), 303)
