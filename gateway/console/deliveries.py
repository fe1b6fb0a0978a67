"""Deliveries in the console: the outbox by recipient and status, and an admin's retry of a
failed message through `retry_delivery`, as POST /v1/deliveries/{id}/retry and
`gateway deliveries retry` do, audited with the signed-in client as actor."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from gateway import policies
from gateway.api.auth import roles
from gateway.api.deliveries import list_deliveries_for, retry_delivery
from gateway.console.forms import ActionForm
from gateway.errors import Conflict
from gateway.store.clients import Role
from gateway.store.outbox import DeliveryStatus

bp = Blueprint("deliveries", __name__)

LISTED = 200  # messages shown, newest first


def _filters() -> tuple[str | None, str | None]:
    recipient = request.args.get("recipient") or None
    status = request.args.get("status") or None
    if recipient not in (None, *policies().recipients):
        recipient = None
    if status not in (None, *(s.value for s in DeliveryStatus)):
        status = None
    return recipient, status


@bp.get("/deliveries")
def deliveries() -> Any:
    """Messages to the recipients, newest first; for admins, a retry button on failed ones."""
    recipient, status = _filters()
    return render_template(
        "console/deliveries.html",
        deliveries=list_deliveries_for(recipient, status, LISTED),
        recipients=sorted(policies().recipients),
        statuses=[s.value for s in DeliveryStatus],
        recipient=recipient,
        status=status,
        form=ActionForm(),
    )


@bp.post("/deliveries/<string:delivery_id>/retry")
@roles(Role.ADMIN)
def retry(delivery_id: str) -> Response:
    """Queue a failed message again, with the same id."""
    form = ActionForm()
    if not form.validate():
        flash("The form expired: nothing was retried. Try again.", "error")
    else:
        try:
            retry_delivery(delivery_id, g.client.name, g.request_id)
            flash(f"Queued {delivery_id} again; the scheduler sends it next.", "success")
        except Conflict as conflict:
            flash(f"{conflict.message} Nothing was retried.", "error")
    return redirect(url_for("console.deliveries.deliveries"), 303)
