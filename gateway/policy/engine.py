"""The decision engine: pure functions over plain data, no Flask, no database, no clock.

    decision = decide("recommendations", gpc=False, consents=records, holdings=held,
                      policies=policy_set, now=datetime.now(UTC))
    decision.outcome, decision.reads      # what may be read for the scorer, nothing else

The order is fixed: registration -> consent (GPC, expiry) -> minimization -> retention.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from gateway.policy.model import (
    PURCHASE,
    Category,
    Fallback,
    LegalBasis,
    Outcome,
    PolicySet,
    Purpose,
    Reason,
    Registration,
)

# Clocks of the apps drift; an event stamped a little in the future is still believable.
CLOCK_SKEW = timedelta(minutes=5)


class ConsentState(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    NEVER_ASKED = "never_asked"


class HoldingKind(StrEnum):
    ATTRIBUTE = "attribute"
    EVENT = "event"


@dataclass(frozen=True)
class ConsentEvent:
    """One stored consent change, as the engine needs it."""

    purpose: str
    granted: bool
    recorded_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Holding:
    """Metadata of stored items (no values): an attribute by name, or `count` events of a type.

    `at` is the item's time; for a group of items, a time none of them is later than. A group
    lies wholly on one side of its category's `retention_cutoff`, which the store splits at.
    """

    database: str
    kind: HoldingKind
    name: str
    at: datetime
    count: int = 1


@dataclass(frozen=True)
class ConsentStatus:
    state: ConsentState
    lawful: bool
    reason: Reason
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Dropped:
    """A field held back from the scorer, and why."""

    field: str
    database: str
    reason: Reason
    count: int = 1


@dataclass(frozen=True)
class ReadPlan:
    """Exactly what the store may read for the scorer."""

    attributes: tuple[tuple[str, str], ...] = ()  # (database, attribute name)
    events: tuple[tuple[str, str, datetime], ...] = ()  # (database, event type, after)
    # (database, event type, since): of the events above, those the scorer needs item by item
    # (purchases it leaves out), from `since` on
    items: tuple[tuple[str, str, datetime], ...] = ()


@dataclass(frozen=True)
class Decision:
    purpose: str
    outcome: Outcome
    reasons: tuple[Reason, ...]
    policy_hash: str
    fields_used: tuple[str, ...] = ()
    fields_dropped: tuple[Dropped, ...] = ()
    reads: ReadPlan = field(default_factory=ReadPlan)

    @property
    def personalized(self) -> bool:
        return self.outcome is Outcome.ALLOW


def grant_expiry(purpose: Purpose, record: ConsentEvent) -> datetime | None:
    """The earlier of the record's own expiry and the purpose's `consent_max_age`."""
    limits = [record.expires_at] if record.expires_at else []
    if purpose.consent_max_age is not None:
        limits.append(record.recorded_at + purpose.consent_max_age)
    return min(limits) if limits else None


def consent_status(purpose: Purpose, records: list[ConsentEvent], now: datetime) -> ConsentStatus:
    """Where the subject stands for one purpose, ignoring GPC (a property of each request)."""
    mine = [r for r in records if r.purpose == purpose.id and r.recorded_at <= now]
    # Records come oldest first; of changes recorded in the same instant the last one wins.
    latest = max(reversed(mine), key=lambda r: r.recorded_at, default=None)
    basis = purpose.legal_basis
    if latest is None:
        state, expires = ConsentState.NEVER_ASKED, None
    elif not latest.granted:
        state, expires = ConsentState.WITHDRAWN, None
    else:
        expires = grant_expiry(purpose, latest)
        expired = expires is not None and expires <= now
        state = ConsentState.EXPIRED if expired else ConsentState.GRANTED
    if basis is LegalBasis.CONTRACT:
        return ConsentStatus(state, True, Reason.CONTRACT, expires)
    if basis is LegalBasis.LEGITIMATE_INTEREST:
        objected = state is ConsentState.WITHDRAWN
        reason = Reason.OBJECTION if objected else Reason.LEGITIMATE_INTEREST
        return ConsentStatus(state, not objected, reason, expires)
    reason = {
        ConsentState.GRANTED: Reason.CONSENT_GRANTED,
        ConsentState.WITHDRAWN: Reason.CONSENT_WITHDRAWN,
        ConsentState.EXPIRED: Reason.CONSENT_EXPIRED,
        ConsentState.NEVER_ASKED: Reason.NO_CONSENT,
    }[state]
    return ConsentStatus(state, state is ConsentState.GRANTED, reason, expires)


def _registration_problem(purpose: Purpose, policies: PolicySet, now: datetime) -> Reason | None:
    listed = [db for db in policies.databases.values() if purpose.id in db.purposes]
    if any(not db.expired(now) for db in listed):
        return None
    return Reason.REGISTRATION_EXPIRED if listed else Reason.NO_REGISTERED_DATABASE


def retention_cutoff(category: Category, now: datetime) -> datetime:
    """Items of `category` are kept while younger than its retention: those at or before the
    cutoff are gone."""
    return now - category.retention


def event_cutoffs(policies: PolicySet, now: datetime) -> dict[str, datetime]:
    """The retention cutoff of every known event type, for a store to split its counts at."""
    return {
        kind: retention_cutoff(category, now)
        for category in policies.categories.values()
        for kind in category.events
    }


def _category_of(holding: Holding, policies: PolicySet) -> Category | None:
    if holding.kind is HoldingKind.ATTRIBUTE:
        return policies.category_of_attribute(holding.name)
    return policies.category_of_event(holding.name)


def _screen(
    holding: Holding, purpose: Purpose, policies: PolicySet, now: datetime
) -> tuple[Category | None, Reason | None]:
    """Why one stored item may not reach the scorer for `purpose`, or None when it may."""
    category = _category_of(holding, policies)
    if category is None:
        unknown = Reason.UNKNOWN_ATTRIBUTE
        return None, unknown if holding.kind is HoldingKind.ATTRIBUTE else Reason.UNKNOWN_EVENT_TYPE
    registration = policies.databases.get(holding.database)
    if registration is None:
        return category, Reason.UNREGISTERED_DATABASE
    if registration.expired(now):
        return category, Reason.REGISTRATION_EXPIRED
    if purpose.id not in registration.purposes:
        return category, Reason.PURPOSE_NOT_REGISTERED
    if category.id not in registration.categories:
        return category, Reason.CATEGORY_NOT_REGISTERED
    if category.id not in purpose.categories:
        return category, Reason.NOT_NEEDED_FOR_PURPOSE
    if category.sensitive and purpose.legal_basis is not LegalBasis.CONSENT:
        return category, Reason.SENSITIVE_NEEDS_CONSENT
    if holding.at <= retention_cutoff(category, now):
        return category, Reason.RETENTION_EXPIRED
    return category, None


def _minimize(
    purpose: Purpose, holdings: list[Holding], policies: PolicySet, now: datetime
) -> tuple[tuple[str, ...], tuple[Dropped, ...], ReadPlan]:
    used: set[str] = set()
    attributes: set[tuple[str, str]] = set()
    events: dict[tuple[str, str], datetime] = {}
    dropped: Counter[tuple[str, str, Reason]] = Counter()
    for holding in holdings:
        category, reason = _screen(holding, purpose, policies, now)
        is_attribute = holding.kind is HoldingKind.ATTRIBUTE
        name = holding.name if is_attribute or category is None else category.id
        if reason is not None:
            dropped[(name, holding.database, reason)] += holding.count
            continue
        assert category is not None
        used.add(name)
        if is_attribute:
            attributes.add((holding.database, holding.name))
        else:
            events[(holding.database, holding.name)] = retention_cutoff(category, now)
    window = purpose.scoring.exclude_purchased_within
    bought = [] if window is None else [(db, k, now - window) for db, k in events if k == PURCHASE]
    plan = ReadPlan(
        attributes=tuple(sorted(attributes)),
        events=tuple(sorted((db, kind, since) for (db, kind), since in events.items())),
        items=tuple(sorted(bought)),
    )
    drops = tuple(Dropped(f, db, r, n) for (f, db, r), n in sorted(dropped.items()))
    return tuple(sorted(used)), drops, plan


def decide(
    purpose_id: str,
    *,
    gpc: bool,
    consents: list[ConsentEvent],
    holdings: list[Holding],
    policies: PolicySet,
    now: datetime,
) -> Decision:
    """Decide what, if anything, of a subject's data may personalize a ranking for a purpose."""
    purpose = policies.purposes[purpose_id]
    refusal = _registration_problem(purpose, policies, now)
    if refusal is None:
        status = consent_status(purpose, consents, now)
        if purpose.honor_gpc and gpc:
            refusal = Reason.GPC_OBJECTION
        elif not status.lawful:
            refusal = status.reason
    if refusal is not None:
        outcome = Outcome.DENY if purpose.fallback is Fallback.NONE else Outcome.FALLBACK
        return Decision(purpose.id, outcome, (refusal,), policies.hash)
    used, dropped, plan = _minimize(purpose, holdings, policies, now)
    return Decision(purpose.id, Outcome.ALLOW, (status.reason,), policies.hash, used, dropped, plan)


def admit(
    kind: HoldingKind,
    name: str,
    database: Registration,
    policies: PolicySet,
    at: datetime,
    now: datetime,
    writer_purposes: Collection[str] | None = None,
) -> Reason | None:
    """Why an attribute or event may not be collected into `database`, or None to store it.

    `writer_purposes` are the purposes the writing client was granted (None: any, as for an
    admin): an app stores only what one of its own purposes registered there uses, so it can
    neither collect for another app's purpose nor overwrite what that app relies on.
    """
    if database.expired(now):
        return Reason.REGISTRATION_EXPIRED
    category = _category_of(Holding(database.id, kind, name, at), policies)
    if category is None:
        is_attribute = kind is HoldingKind.ATTRIBUTE
        return Reason.UNKNOWN_ATTRIBUTE if is_attribute else Reason.UNKNOWN_EVENT_TYPE
    if category.id not in database.categories:
        return Reason.CATEGORY_NOT_REGISTERED
    users = [
        p
        for p in map(policies.purposes.__getitem__, database.purposes)
        if category.id in p.categories
    ]
    if not users:
        return Reason.NO_PURPOSE_NEEDS_IT
    if writer_purposes is not None and not any(p.id in writer_purposes for p in users):
        return Reason.PURPOSE_NOT_GRANTED
    if at > now + CLOCK_SKEW:
        return Reason.FUTURE_TIMESTAMP
    if at <= now - category.retention:
        return Reason.STALE
    return None
