"""The active documents in the console: the registry of databases with the records of
processing (and their CSV, as GET /v1/registry/records-of-processing?format=csv gives it), and
the policy set.
"""

from __future__ import annotations

from datetime import UTC, datetime

import isodate
from flask import Blueprint, Response, render_template

from gateway import policies
from gateway.policy.model import Duration
from gateway.policy.records import records_csv, records_of_processing

bp = Blueprint("documents", __name__)


def duration(value: Duration | None) -> str:
    """An ISO 8601 duration as the documents write it (P90D), or a dash for none."""
    return "—" if value is None else str(isodate.duration_isoformat(value))


@bp.get("/registry")
def registry() -> str:
    """Every registered database and its record of processing."""
    active = policies()
    records = records_of_processing(active, datetime.now(UTC))
    return render_template("console/registry.html", records=records, policy_hash=active.hash)


@bp.get("/registry/records-of-processing.csv")
def records_download() -> Response:
    """The records of processing as CSV, a row per database."""
    records = records_of_processing(policies(), datetime.now(UTC))
    return Response(
        records_csv(records),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="records-of-processing.csv"'},
    )


@bp.get("/policies")
def policy_set() -> str:
    """Purposes, legal bases, what each may use, retention per category, the policy hash."""
    active = policies()
    return render_template(
        "console/policies.html",
        purposes=sorted(active.purposes.values(), key=lambda p: p.id),
        categories=sorted(active.categories.values(), key=lambda c: c.id),
        policy_hash=active.hash,
        duration=duration,
    )
