"""Data-subject requests in the console: what is held about a subject, its access export and
(admins) its erasure.

Showing a subject's page is an access: it calls the API's own export function, which audits a
`subject.export` entry as GET /v1/subjects/{id}/export does, and the download is that
endpoint's JSON. An erasure, confirmed by typing the subject id again, calls the function
DELETE /v1/subjects/{id} calls: the same deletion, key destruction order and confirmation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from gateway.api.auth import roles
from gateway.api.strict import check_subject_id
from gateway.api.subjects import SubjectExportSchema, erase_subject, subject_export
from gateway.console.forms import ConfirmForm
from gateway.errors import InvalidInput
from gateway.store.clients import Role

bp = Blueprint("subjects", __name__, url_prefix="/subjects")

RECENT_ENTRIES = 20  # of the audit entries about the subject, the latest shown
MISMATCH = "The id typed does not match the subject's id: nothing was erased."


@bp.get("")
def lookup() -> Any:
    """The lookup form; with a subject id, that subject's page."""
    subject_id = request.args.get("subject_id")
    if subject_id is None:
        return render_template("console/subjects.html", errors={}, subject_id="")
    try:
        check_subject_id(subject_id)
    except InvalidInput as exc:
        page = render_template("console/subjects.html", errors=exc.errors, subject_id=subject_id)
        return page, exc.status
    return redirect(url_for("console.subjects.show", subject_id=subject_id), 303)


@bp.get("/<string:subject_id>")
def show(subject_id: str) -> str:
    """Consent history with receipts and every item held, with its terms (an audited access)."""
    export = subject_export(subject_id)
    return render_template("console/subject.html", export=export, recent=RECENT_ENTRIES)


@bp.get("/<string:subject_id>/export")
def download(subject_id: str) -> Response:
    """The access export, byte for byte the JSON of GET /v1/subjects/{id}/export."""
    body = SubjectExportSchema().dump(subject_export(subject_id))
    response = jsonify(body)
    name = f"subject-export-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def _erase_page(subject_id: str, form: ConfirmForm, status: int, error: str | None = None) -> Any:
    page = render_template("console/erase.html", subject_id=subject_id, form=form, error=error)
    return page, status


@bp.route("/<string:subject_id>/erase", methods=["GET", "POST"])
@roles(Role.ADMIN)
def erase(subject_id: str) -> Any:
    """Ask for the subject id again; erase only when it matches."""
    check_subject_id(subject_id)
    form = ConfirmForm()
    if request.method == "GET":
        return _erase_page(subject_id, form, 200)
    if not form.validate():
        return _erase_page(subject_id, form, 422)
    if form.confirm.data != subject_id:
        return _erase_page(subject_id, form, 422, MISMATCH)
    result = erase_subject(subject_id)
    deleted = result["deleted"]
    key = "its data key was destroyed" if result["key_destroyed"] else "no data key was held"
    flash(
        f"Erased {subject_id}: {deleted['attributes']} attributes, {deleted['events']} events "
        f"and {deleted['consents']} consent records deleted; {key}.",
        "success",
    )
    return redirect(url_for("console.subjects.lookup"), 303)
