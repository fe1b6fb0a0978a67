"""Read the audit log: filtered pages with a stable cursor, and a compliance summary.

    page = find_entries(EntryFilter(purpose="recommendations", since=t0), after_seq=0, limit=100)
    page.entries, page.next_after      # pass next_after back for the following page
    decisions_by_day(t0)               # [DayCount(day, purpose, outcome, count), ...]

Pages run in seq order and a cursor is the last seq seen, so entries appended between two
pages never shift, repeat or skip anything.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from peewee import SQL, fn

from gateway.audit.chain import Action, entry_body, row_body, timestamp
from gateway.store.db import stream_rows
from gateway.store.models import AuditEntry


@dataclass(frozen=True)
class EntryFilter:
    subject: str | None = None  # pseudonym
    purpose: str | None = None
    action: str | None = None
    outcome: str | None = None
    actor: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def where(self) -> Any:
        clauses: list[Any] = [AuditEntry.seq > 0]
        for column, value in (
            (AuditEntry.subject, self.subject),
            (AuditEntry.purpose, self.purpose),
            (AuditEntry.action, self.action),
            (AuditEntry.outcome, self.outcome),
            (AuditEntry.actor, self.actor),
        ):
            if value is not None:
                clauses.append(column == value)
        if self.since is not None:
            clauses.append(AuditEntry.at >= timestamp(self.since))
        if self.until is not None:
            clauses.append(AuditEntry.at < timestamp(self.until))
        condition = clauses[0]
        for clause in clauses[1:]:
            condition &= clause
        return condition


@dataclass(frozen=True)
class DayCount:
    """How many decisions of one purpose had one outcome on one UTC day."""

    day: date
    purpose: str
    outcome: str
    count: int


@dataclass(frozen=True)
class Page:
    entries: list[dict[str, Any]]
    next_after: int | None


def find_entries(where: EntryFilter, *, after_seq: int, limit: int) -> Page:
    """Up to `limit` matching entries after `after_seq`; `next_after` is None on the last page."""
    rows = (
        AuditEntry.select()
        .where(where.where() & (AuditEntry.seq > after_seq))
        .order_by(AuditEntry.seq)
        .limit(limit + 1)
    )
    entries = [entry_body(row) for row in rows]
    more = len(entries) > limit
    entries = entries[:limit]
    return Page(entries, entries[-1]["seq"] if more else None)


def seq_range(since: datetime | None, until: datetime | None) -> tuple[int, int] | None:
    """The first and last seq of entries written in [since, until), or None if there are none."""
    window = EntryFilter(since=since, until=until).where()
    first, last = (
        AuditEntry.select(fn.MIN(AuditEntry.seq), fn.MAX(AuditEntry.seq))
        .where(window)
        .scalar(as_tuple=True)
    )
    return None if first is None else (first, last)


def iter_range(first: int, last: int) -> Iterator[dict[str, Any]]:
    """Stored entries first..last in seq order, as plain rows, in constant memory."""
    query = AuditEntry.select().where(AuditEntry.seq.between(first, last)).order_by(AuditEntry.seq)
    return (row_body(row) for row in stream_rows(query))


def summary(since: datetime | None, until: datetime | None) -> dict[str, Any]:
    """Decisions by purpose and outcome, refusals by reason, consent changes, purges, exports."""
    window = EntryFilter(since=since, until=until).where()
    decisions: dict[str, dict[str, int]] = defaultdict(dict)
    refusals: Counter[str] = Counter()
    consents: dict[str, dict[str, int]] = defaultdict(lambda: {"granted": 0, "withdrawn": 0})
    actions: dict[str, int] = {}
    erasures = 0
    grouped = (
        AuditEntry.select(
            AuditEntry.action,
            AuditEntry.purpose,
            AuditEntry.outcome,
            AuditEntry.reasons,
            fn.COUNT(AuditEntry.seq).alias("n"),
        )
        .where(window)
        .group_by(AuditEntry.action, AuditEntry.purpose, AuditEntry.outcome, AuditEntry.reasons)
        .tuples()
    )
    rows: list[tuple[str, str, str, str, int]] = list(grouped)  # type: ignore[arg-type]
    for action, purpose, outcome, reasons, n in rows:
        actions[action] = actions.get(action, 0) + n
        if action == Action.DECISION:
            per_purpose = decisions[purpose]
            per_purpose[outcome] = per_purpose.get(outcome, 0) + n
            if outcome != "allow":
                refusals.update({reason: n for reason in json.loads(reasons)})
        elif action == Action.SUBJECT_ERASE and outcome == "erased":
            # an erasure's later `key_destroyed` confirmation is not another erasure
            erasures += n
        elif action in (Action.CONSENT_GRANT, Action.CONSENT_WITHDRAW):
            key = "granted" if action == Action.CONSENT_GRANT else "withdrawn"
            consents[purpose][key] += n
    return {
        "since": since,
        "until": until,
        "entries": sum(actions.values()),
        "decisions": dict(decisions),
        "refusals": dict(refusals),
        "consents": dict(consents),
        "purges": _purges(window),
        "erasures": erasures,
        "actions": actions,
    }


def decisions_by_day(since: datetime, until: datetime | None = None) -> list[DayCount]:
    """Decision entries written in [since, until), counted per UTC day, purpose and outcome."""
    # An entry's `at` is UTC text, so its first ten characters are its day. The positions are
    # literals: PostgreSQL matches a GROUP BY expression to the select list's only when their
    # parameters are the same text, and bound parameters are not.
    day = fn.SUBSTR(AuditEntry.at, SQL("1"), SQL("10"))
    window = EntryFilter(since=since, until=until, action=Action.DECISION.value).where()
    grouped = (
        AuditEntry.select(day, AuditEntry.purpose, AuditEntry.outcome, fn.COUNT(AuditEntry.seq))
        .where(window)
        .group_by(day, AuditEntry.purpose, AuditEntry.outcome)
        .tuples()
    )
    rows: list[tuple[str, str, str, int]] = list(grouped)  # type: ignore[arg-type]
    return [DayCount(date.fromisoformat(d), p, o, n) for d, p, o, n in rows]


def _purges(window: Any) -> dict[str, Any]:
    """Purge runs and the rows they deleted per category, from the runs' own entries."""
    runs = dry_runs = 0
    deleted: Counter[str] = Counter()
    purges = AuditEntry.select(AuditEntry.outcome, AuditEntry.fields).where(
        window & (AuditEntry.action == Action.PURGE.value)
    )
    for entry in purges.iterator():
        if entry.outcome == "dry_run":
            dry_runs += 1
            continue
        runs += 1
        deleted.update(json.loads(entry.fields).get("deleted", {}))
    return {"runs": runs, "dry_runs": dry_runs, "deleted": dict(deleted)}
