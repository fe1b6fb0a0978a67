"""The audit log in the console: search with the API's filters and cursors, one entry in full,
the export download and a verification on demand.

Filters are validated by the API's own schemas (EntriesArgs, ExportArgs) and answered by the
API's own functions, so a page shows what GET /v1/audit/entries returns, an export is the same
download as GET /v1/audit/export (audited alike), and a verification is GET /v1/audit/verify's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, render_template, request, url_for
from marshmallow import ValidationError

from gateway import policies
from gateway.api.audit import EntriesArgs, ExportArgs, entries_page, export_download
from gateway.audit import chain_now, verify_database
from gateway.audit.chain import Action, entry_body
from gateway.console.forms import ActionForm
from gateway.errors import GatewayError, NotFound
from gateway.store.models import AuditEntry

bp = Blueprint("audit", __name__, url_prefix="/audit")

FILTERS = ("subject_id", "purpose", "action", "outcome", "client", "since", "until")
PAGE_SIZES = (25, 50, 100, 200)
OUTCOMES = ("allow", "fallback", "deny", "recorded", "granted", "withdrawn", "exported", "erased")
MAX_SEQ = 2**63 - 1


def _field_errors(messages: Any) -> dict[str, list[str]]:
    """marshmallow's messages as `field: [messages]` (a schema-wide one under `query`)."""
    if not isinstance(messages, Mapping):
        return {"query": [str(messages)]}
    return {
        str(name): [str(m) for m in found] if isinstance(found, list) else [str(found)]
        for name, found in messages.items()
    }


def _given() -> dict[str, str]:
    """The query as the form sent it, without its empty boxes (an empty box is no filter)."""
    return {name: value for name, value in request.args.items() if value != ""}


def _search_page(given: Mapping[str, str], status: int = 200, **found: Any) -> tuple[str, int]:
    window: dict[str, Any] = {name: given[name] for name in ("since", "until") if name in given}
    return render_template(
        "console/audit.html",
        given=given,
        actions=[a.value for a in Action],
        purposes=sorted(policies().purposes),
        outcomes=OUTCOMES,
        page_sizes=PAGE_SIZES,
        export_jsonl=url_for("console.audit.export", format="jsonl", **window),
        export_csv=url_for("console.audit.export", format="csv", **window),
        **{"entries": None, "next_url": None, "first_url": None, "errors": {}, **found},
    ), status


@bp.get("")
def search() -> tuple[str, int]:
    """Entries matching the filters, a page at a time, in seq order."""
    given = _given()
    try:
        args = EntriesArgs().load({"limit": str(PAGE_SIZES[1]), **given})
        entries, cursor = entries_page(args)
    except ValidationError as exc:
        return _search_page(given, 422, errors=_field_errors(exc.messages))
    except GatewayError as exc:
        if not exc.errors or exc.status >= 500:
            raise
        return _search_page(given, exc.status, errors=exc.errors)
    following: dict[str, Any] = {name: value for name, value in given.items() if name != "cursor"}
    next_url = url_for("console.audit.search", **following, cursor=cursor) if cursor else None
    first_url = url_for("console.audit.search", **following) if "cursor" in given else None
    return _search_page(given, entries=entries, next_url=next_url, first_url=first_url)


@bp.get(f"/<int(min=1, max={MAX_SEQ}):seq>")
def entry(seq: int) -> str:
    """One entry, every field of it."""
    chain_now(wait=True)
    row = AuditEntry.get_or_none(AuditEntry.seq == seq)
    if row is None:
        raise NotFound(f"There is no audit entry {seq}.", {"seq": [f"No entry {seq}."]})
    following = AuditEntry.select().where(AuditEntry.seq == seq + 1).exists()
    return render_template("console/entry.html", entry=entry_body(row), has_next=following)


@bp.get("/export")
def export() -> Any:
    """The export download (JSON lines or CSV) of a time window, as the API gives it."""
    given = _given()
    try:
        args = ExportArgs().load(given)
    except ValidationError as exc:
        kept = {name: value for name, value in given.items() if name in FILTERS}
        return _search_page(kept, 422, errors=_field_errors(exc.messages))
    return export_download(args["format"], args.get("since"), args.get("until"))


@bp.route("/verify", methods=["GET", "POST"])
def verify() -> str:
    """The verification of GET /v1/audit/verify, run when the button is pressed."""
    result = verify_database() if request.method == "POST" else None
    return render_template("console/verify.html", form=ActionForm(), result=result)
