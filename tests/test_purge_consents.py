"""Consent purges never bring an expired consent back, whatever order their batches take.

Histories go straight into the database, with explicit ids (out of time order, as concurrent PUTs
can store them) and ties in `recorded_at`; what a subject's consent means is read back the way the
API reads it (`consent_records` and the engine's `consent_status`).

The invariant: at every instant from the purge's `now` on, after every batch of a purge (so after
a run killed between any two batches, however its batches were picked), each (subject, purpose)
is exactly as lawful as before. Its state changes only from `expired` to `withdrawn` or
`never_asked`, and only where that keeps `lawful`: under legitimate interest a withdrawal is an
objection, so an expired grant after one stays. A `granted` status never changes at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import time_machine
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import keyring
from gateway.policy.engine import ConsentState, ConsentStatus, consent_status
from gateway.policy.model import LegalBasis, PolicySet, Purpose
from gateway.retention import expired_targets, purge_expired
from gateway.store.consents import as_events, consent_records
from gateway.store.db import database, write_transaction
from gateway.store.models import ConsentRecord, Subject
from gateway.store.subjects import ensure_subject
from tests.conftest import Caller

DAY = timedelta(days=1)
T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
NOW = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
PURPOSES = ("recommendations", "ads_personalization", "email_marketing")
SUBJECTS = ("subject-a", "subject-b")
FOREVER = NOW + 20 * 365 * DAY
RECORD_ID: Any = ConsentRecord._meta.primary_key  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Change:
    """One stored consent record, as a test writes it."""

    id: int
    subject: str
    purpose: str
    granted: bool
    recorded_at: datetime
    expires_at: datetime | None = None


Statuses = dict[tuple[str, str, datetime], ConsentStatus]
Key = TypeVar("Key")


# -- the database ------------------------------------------------------------------------------


def subjects() -> dict[str, Subject]:
    """The test subjects, created once per instance (inside an app context)."""
    ring = keyring()
    with write_transaction():
        return {s: ensure_subject(ring, ring.pseudonym(s), T0) for s in SUBJECTS}


def store(changes: list[Change], known: dict[str, Subject]) -> None:
    """Replace every consent record by `changes`, ids and instants as given."""
    rows = [
        {
            "id": c.id,
            "subject": known[c.subject],
            "receipt_id": f"receipt-{c.id}",
            "purpose": c.purpose,
            "granted": c.granted,
            "source": "test",
            "notice_version": "2025-05",
            "recorded_at": c.recorded_at,
            "expires_at": c.expires_at,
            "client": "test",
            "policy_hash": "test",
            "signature": "unsigned",
        }
        for c in changes
    ]
    with write_transaction():
        ConsentRecord.delete().execute()
        if rows:
            ConsentRecord.insert_many(rows).execute()


def left() -> set[int]:
    return {r.get_id() for r in ConsentRecord.select(RECORD_ID)}


def statuses(policies: PolicySet, known: dict[str, Subject], instants: list[datetime]) -> Statuses:
    """Every (subject, purpose)'s consent status at each instant, as the API would answer."""
    found: Statuses = {}
    for name, subject in known.items():
        for purpose in PURPOSES:
            events = as_events(consent_records(subject, purpose))
            for instant in instants:
                found[name, purpose, instant] = consent_status(
                    policies.purposes[purpose], events, instant
                )
    return found


def changed_meaning(
    before: Mapping[Key, ConsentStatus], after: Mapping[Key, ConsentStatus]
) -> dict[Key, tuple[ConsentStatus, ConsentStatus]]:
    """Where a purge changed what a consent means: anything but expired becoming withdrawn or
    never_asked with `lawful` kept."""
    wrong = {}
    for key, was in before.items():
        now = after[key]
        harmless = (
            was.state is ConsentState.EXPIRED
            and now.state in (ConsentState.WITHDRAWN, ConsentState.NEVER_ASKED)
            and now.lawful == was.lawful
        )
        if now != was and not harmless:
            wrong[key] = (was, now)
    return wrong


def deletable(policies: PolicySet, now: datetime) -> list[int]:
    """The consent records a purge batch at `now` may delete, as the database stands."""
    ids: list[int] = []
    for target in expired_targets(policies, now):
        if target.kind == "consents":
            query = target.model.select(RECORD_ID).where(target.condition)
            ids += [row.get_id() for row in query]
    return sorted(ids)


def instants_of(changes: list[Change], now: datetime) -> list[datetime]:
    """`now`, and every later instant at which a stored record starts or stops counting."""
    moments = {now, FOREVER}
    for change in changes:
        moments.update(t for t in (change.recorded_at, change.expires_at) if t and t > now)
    return sorted(moments)


# -- what a purge should leave -----------------------------------------------------------------


def ended(purpose: Purpose, change: Change, now: datetime) -> bool:
    """A grant past its expiry plus the purpose's history retention, by the purge's cutoffs."""
    kept_until = now - (purpose.consent_history_retention or timedelta(0))
    if not change.granted or change.recorded_at > now:
        return False
    by_date = change.expires_at is not None and change.expires_at <= kept_until
    max_age = purpose.consent_max_age
    return by_date or (max_age is not None and change.recorded_at <= kept_until - max_age)


def survivors(policies: PolicySet, changes: list[Change], now: datetime) -> set[int]:
    """The records a finished purge leaves: it deletes the latest ended grant of a (subject,
    purpose) and every grant before it, but keeps withdrawals, records made after `now`, and an
    expired grant of a legitimate-interest purpose that follows an objection."""
    doomed: set[int] = set()
    pairs = {(c.subject, c.purpose) for c in changes}
    for subject, purpose_id in pairs:
        purpose = policies.purposes[purpose_id]
        mine = [c for c in changes if (c.subject, c.purpose) == (subject, purpose_id)]
        seen = sorted(
            (c for c in mine if c.recorded_at <= now), key=lambda c: (c.recorded_at, c.id)
        )
        last_ended = max((i for i, c in enumerate(seen) if ended(purpose, c, now)), default=None)
        if last_ended is None:
            continue
        doomed.update(c.id for c in seen[: last_ended + 1] if c.granted)
        objected = any(not c.granted for c in seen[:last_ended])
        interest = purpose.legal_basis is LegalBasis.LEGITIMATE_INTEREST
        if last_ended == len(seen) - 1 and interest and objected:
            doomed.discard(seen[last_ended].id)
    return {c.id for c in changes} - doomed


# -- histories written by hand -----------------------------------------------------------------

GRANT, WITHDRAW = True, False
ENDS = T0 + 30 * DAY
PURGE_AT = T0 + 31 * DAY
# Each history, one subject's: (id, purpose, granted, days after T0, expires_at); then whether
# the consent counts at PURGE_AT (before and after the purge) and the ids a purge leaves.
REC, MAIL = "recommendations", "email_marketing"
HISTORIES = {
    "newer_ended_grant_has_the_lower_id": (
        [(1, REC, GRANT, 1, ENDS), (2, REC, GRANT, 0, None)],
        False,
        set(),
    ),
    "two_open_grants_before_an_ended_one_stored_first": (
        [(1, REC, GRANT, 2, ENDS), (2, REC, GRANT, 0, None), (3, REC, GRANT, 1, None)],
        False,
        set(),
    ),
    "same_instant_the_higher_id_ended": (
        [(2, REC, GRANT, 1, ENDS), (1, REC, GRANT, 1, None)],
        False,
        set(),
    ),
    "same_instant_the_higher_id_open": (
        [(1, REC, GRANT, 1, ENDS), (2, REC, GRANT, 1, None)],
        True,
        {2},
    ),
    "open_grant_withdrawal_then_ended_grant_stored_backwards": (
        [(1, REC, GRANT, 1, ENDS), (2, REC, WITHDRAW, 0.5, None), (3, REC, GRANT, 0, None)],
        False,
        {2},
    ),
    "open_grant_after_an_ended_one": (
        [(2, REC, GRANT, 0, ENDS), (1, REC, GRANT, 1, None)],
        True,
        {1},
    ),
    "legitimate_interest_expired_grant_after_an_objection": (
        [(1, MAIL, GRANT, 1, ENDS), (2, MAIL, WITHDRAW, 0, None)],
        True,
        {1, 2},
    ),
    "legitimate_interest_expired_grant_alone": ([(1, MAIL, GRANT, 1, ENDS)], True, set()),
}


def by_hand(rows: list[tuple[Any, ...]]) -> list[Change]:
    return [
        Change(id_, SUBJECTS[0], purpose, granted, T0 + days * DAY, expires)
        for id_, purpose, granted, days, expires in rows
    ]


def lawful_now(caller: Caller, purpose: str) -> bool:
    response = caller.get(f"/v1/subjects/{SUBJECTS[0]}/consents/{purpose}")
    assert response.status_code == 200, response.get_json()
    return bool(response.get_json()["lawful"])


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
@pytest.mark.parametrize(("rows", "lawful", "kept"), list(HISTORIES.values()), ids=list(HISTORIES))
def test_a_purge_in_batches_keeps_every_consent_as_lawful_as_it_was(
    make_app: Any,
    new_caller: Any,
    batch_size: int,
    rows: list[tuple[Any, ...]],
    lawful: bool,
    kept: set[int],
) -> None:
    app = make_app(PURGE_BATCH_SIZE=batch_size)
    reader, admin = (Caller(app.test_client(), new_caller(r).key) for r in ("auditor", "admin"))
    changes = by_hand(rows)
    with app.app_context(), database.connection_context():
        store(changes, subjects())
    purpose = changes[0].purpose
    with time_machine.travel(PURGE_AT, tick=False):
        before = lawful_now(reader, purpose)
        response = admin.post("/v1/purges", {"dry_run": False})
        after = lawful_now(reader, purpose)
    assert response.status_code == 200, response.get_json()
    assert (before, after) == (lawful, lawful)
    with app.app_context(), database.connection_context():
        assert left() == kept
    report = {(c["kind"], c["category"]): c for c in response.get_json()["categories"]}
    gone = len(changes) - len(kept)
    assert (report["consents", purpose]["found"], report["consents", purpose]["deleted"]) == (
        gone,
        gone,
    )


# -- any history, any batches ------------------------------------------------------------------

RETENTIONS = st.sampled_from([None, timedelta(days=30), timedelta(days=200)])


@st.composite
def histories(draw: st.DrawFn) -> list[Change]:
    """A few consent changes of two subjects for three purposes: instants on a 30-day grid
    (so ties are common), a few after `NOW`, ids in any order."""
    count = draw(st.integers(1, 12))
    ids = draw(st.permutations(range(1, count + 1)))
    changes = []
    for id_ in ids:
        granted = draw(st.booleans())
        recorded_at = NOW + draw(st.integers(-24, 1)) * 30 * DAY
        expires = draw(st.none() | st.integers(1, 15)) if granted else None
        changes.append(
            Change(
                id=id_,
                subject=draw(st.sampled_from(SUBJECTS)),
                purpose=draw(st.sampled_from(PURPOSES)),
                granted=granted,
                recorded_at=recorded_at,
                expires_at=None if expires is None else recorded_at + expires * 30 * DAY,
            )
        )
    return changes


def with_retention(policies: PolicySet, retention: dict[str, timedelta | None]) -> PolicySet:
    """The same policies, each purpose keeping ended consent records as long as `retention` says."""
    purposes = {
        pid: replace(p, consent_history_retention=retention[pid])
        for pid, p in policies.purposes.items()
    }
    return replace(policies, purposes=purposes)


@pytest.fixture
def instance(app: Flask) -> Iterator[tuple[PolicySet, dict[str, Subject]]]:
    """The app's policies and the test subjects, inside its context and a connection."""
    with app.app_context(), database.connection_context():
        yield app.extensions["gateway.policies"], subjects()


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    # one instance serves every example: each example stores its own history first
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(
    changes=histories(),
    retention=st.fixed_dictionaries({p: RETENTIONS for p in PURPOSES}),
    data=st.data(),
)
def test_no_batch_of_a_consent_purge_changes_what_a_consent_means(
    instance: tuple[PolicySet, dict[str, Subject]],
    changes: list[Change],
    retention: dict[str, timedelta | None],
    data: st.DataObject,
) -> None:
    """Any subset of what may go now is a batch the database may pick (or the last one before a
    kill); after each, every consent means what it meant, and at the end exactly the records
    that should go are gone."""
    base, known = instance
    policies = with_retention(base, retention)
    store(changes, known)
    instants = instants_of(changes, NOW)
    before = statuses(policies, known, instants)
    while candidates := deletable(policies, NOW):
        batch = data.draw(st.sets(st.sampled_from(candidates), min_size=1), label="batch")
        with write_transaction():
            ConsentRecord.delete().where(RECORD_ID.in_(batch)).execute()
        assert changed_meaning(before, statuses(policies, known, instants)) == {}
    assert left() == survivors(policies, changes, NOW)


@PROPERTY
@given(
    changes=histories(),
    retention=st.fixed_dictionaries({p: RETENTIONS for p in PURPOSES}),
    batch_size=st.integers(1, 4),
)
def test_a_consent_purge_deletes_what_it_found_and_leaves_every_consent_meaning_the_same(
    instance: tuple[PolicySet, dict[str, Subject]],
    changes: list[Change],
    retention: dict[str, timedelta | None],
    batch_size: int,
) -> None:
    base, known = instance
    policies = with_retention(base, retention)
    store(changes, known)
    instants = instants_of(changes, NOW)
    before = statuses(policies, known, instants)
    outcome = purge_expired(policies, NOW, actor="test", batch_size=batch_size)
    assert changed_meaning(before, statuses(policies, known, instants)) == {}
    expected = survivors(policies, changes, NOW)
    assert left() == expected
    consents = [r for r in outcome.results if r.kind == "consents"]
    assert [r.found for r in consents] == [r.deleted for r in consents]
    assert sum(r.deleted for r in consents) == len(changes) - len(expected)
