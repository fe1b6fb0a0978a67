"""The console's first page: decisions per day, refusals, consent changes, the state of the
audit chain, the last purge and the registrations due for review.

The chain is not verified here (a full verification reads every entry): the page shows the head
`gateway audit verify` last recorded (GATEWAY_AUDIT_VERIFIED_STATE), whether that entry still
has the hash verified, and how many entries came after it, unverified.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, render_template
from peewee import fn

from gateway import keyring, policies
from gateway.audit import chain_now
from gateway.audit.queries import DayCount, decisions_by_day, summary
from gateway.audit.resume import VerifiedHead, VerifiedStateInvalid, check_head, load_head
from gateway.audit.verification import Verification
from gateway.console.chart import Chart, last_days, stacked_bars
from gateway.policy.model import Outcome, PolicySet, Registration
from gateway.retention import recent_runs
from gateway.store.models import AuditEntry

bp = Blueprint("overview", __name__)

DAYS = 14
REVIEW_NOTICE = timedelta(days=60)  # registrations due within this long are listed
OUTCOMES = [o.value for o in Outcome]


@dataclass(frozen=True)
class ChainStatus:
    """What is known of the chain without verifying it now."""

    last_seq: int
    head: VerifiedHead | None = None  # the last head a verification recorded
    unverified: int = 0  # entries after that head
    broken: Verification | None = None  # the head's entry no longer has the hash verified
    error: str | None = None  # the recorded head cannot be read or trusted


@dataclass(frozen=True)
class Review:
    registration: Registration
    days_left: int


def chain_status() -> ChainStatus:
    """The recorded head, checked against its stored entry (one row), and what came after."""
    last = int(AuditEntry.select(fn.MAX(AuditEntry.seq)).scalar() or 0)
    try:
        head = load_head(Path(current_app.config["AUDIT_VERIFIED_STATE"]), keyring())
    except VerifiedStateInvalid as exc:
        return ChainStatus(last, error=exc.message)
    if head is None:
        return ChainStatus(last, unverified=last)
    return ChainStatus(last, head, max(0, last - head.seq), check_head(head))


def reviews_due(active: PolicySet, today: date) -> list[Review]:
    """Registrations past their review date or due within REVIEW_NOTICE, soonest first."""
    due = [
        Review(r, (r.review_by - today).days)
        for r in active.databases.values()
        if r.review_by <= today + REVIEW_NOTICE
    ]
    return sorted(due, key=lambda review: (review.registration.review_by, review.registration.id))


def decision_charts(days: list[date], counts: list[DayCount]) -> dict[str, Chart]:
    """A chart per purpose with decisions in the window, its outcomes stacked per day."""
    by_purpose: dict[str, dict[tuple[date, str], int]] = defaultdict(dict)
    for row in counts:
        by_purpose[row.purpose][(row.day, row.outcome)] = row.count
    charts = {}
    for purpose in sorted(by_purpose):
        found = {outcome for _, outcome in by_purpose[purpose]}
        series = [o for o in OUTCOMES if o in found] + sorted(found - set(OUTCOMES))
        charts[purpose] = stacked_bars(days, by_purpose[purpose], series)
    return charts


def totals(found: dict[str, Any]) -> dict[str, int]:
    """The summary's decisions, consent grants and withdrawals, each added up."""
    return {
        "decisions": sum(sum(outcomes.values()) for outcomes in found["decisions"].values()),
        "granted": sum(changes["granted"] for changes in found["consents"].values()),
        "withdrawn": sum(changes["withdrawn"] for changes in found["consents"].values()),
    }


@bp.get("/")
def show() -> Any:
    """The overview of the last DAYS days."""
    today = datetime.now(UTC).date()
    days = last_days(today, DAYS)
    since = datetime.combine(days[0], time(), UTC)
    chain_now(wait=True)  # every committed entry counted
    runs = recent_runs(1)
    found = summary(since, None)
    return render_template(
        "console/overview.html",
        days=days,
        since=since,
        charts=decision_charts(days, decisions_by_day(since)),
        summary=found,
        totals=totals(found),
        chain=chain_status(),
        last_run=runs[0] if runs else None,
        reviews=reviews_due(policies(), today),
        review_notice=REVIEW_NOTICE.days,
    )
