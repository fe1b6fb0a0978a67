"""The pure rules of decide(), admit() and consent_status(), each tested on both sides."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.policy.documents import load_policy_set
from gateway.policy.engine import (
    ConsentEvent,
    ConsentState,
    Decision,
    Dropped,
    Holding,
    HoldingKind,
    ReadPlan,
    admit,
    consent_status,
    decide,
)
from gateway.policy.model import LegalBasis, Outcome, PolicySet, Reason

Documents = tuple[Path, Path]

# Inside every demo registration's review date except mobile_location's (2025-12-31).
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)

ATTRIBUTE, EVENT = HoldingKind.ATTRIBUTE, HoldingKind.EVENT


@pytest.fixture
def policies(documents: Documents) -> PolicySet:
    return load_policy_set(*documents)


def replace_in(path: Path, old: str, new: str) -> None:
    """Edit one document in place; the text to replace must be there exactly once."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def grant(purpose: str, at: datetime, expires_at: datetime | None = None) -> ConsentEvent:
    return ConsentEvent(purpose, True, at, expires_at)


def withdraw(purpose: str, at: datetime) -> ConsentEvent:
    return ConsentEvent(purpose, False, at)


def attribute(database: str, name: str, at: datetime = NOW - DAY) -> Holding:
    return Holding(database, ATTRIBUTE, name, at)


def event(database: str, name: str, at: datetime = NOW - DAY) -> Holding:
    return Holding(database, EVENT, name, at)


def run(
    policies: PolicySet,
    purpose: str,
    consents: list[ConsentEvent],
    holdings: list[Holding] | None = None,
    *,
    gpc: bool = False,
    now: datetime = NOW,
) -> Decision:
    return decide(
        purpose,
        gpc=gpc,
        consents=consents,
        holdings=holdings or [],
        policies=policies,
        now=now,
    )


def granted(purpose: str) -> list[ConsentEvent]:
    return [grant(purpose, NOW - 10 * DAY)]


# --- consent --------------------------------------------------------------------------------------

CONSENT_HISTORIES = [
    pytest.param([], Outcome.FALLBACK, Reason.NO_CONSENT, id="never-asked"),
    pytest.param(
        [grant("recommendations", NOW - DAY)], Outcome.ALLOW, Reason.CONSENT_GRANTED, id="granted"
    ),
    pytest.param(
        [grant("recommendations", NOW - 2 * DAY), withdraw("recommendations", NOW - DAY)],
        Outcome.FALLBACK,
        Reason.CONSENT_WITHDRAWN,
        id="withdrawn-after-grant",
    ),
    pytest.param(
        [
            grant("recommendations", NOW - 3 * DAY),
            withdraw("recommendations", NOW - 2 * DAY),
            grant("recommendations", NOW - DAY),
        ],
        Outcome.ALLOW,
        Reason.CONSENT_GRANTED,
        id="regranted-after-withdrawal",
    ),
    pytest.param(
        # The order of the records does not matter, only their time.
        [withdraw("recommendations", NOW - DAY), grant("recommendations", NOW - 2 * DAY)],
        Outcome.FALLBACK,
        Reason.CONSENT_WITHDRAWN,
        id="withdrawn-listed-first",
    ),
    pytest.param(
        [grant("email_marketing", NOW - DAY)],
        Outcome.FALLBACK,
        Reason.NO_CONSENT,
        id="grant-for-another-purpose",
    ),
    pytest.param(
        [grant("recommendations", NOW + SECOND)],
        Outcome.FALLBACK,
        Reason.NO_CONSENT,
        id="grant-recorded-after-now",
    ),
    pytest.param(
        [grant("recommendations", NOW - DAY), withdraw("recommendations", NOW + SECOND)],
        Outcome.ALLOW,
        Reason.CONSENT_GRANTED,
        id="withdrawal-recorded-after-now",
    ),
    pytest.param(
        [grant("recommendations", NOW - DAY), withdraw("recommendations", NOW - DAY)],
        Outcome.FALLBACK,
        Reason.CONSENT_WITHDRAWN,
        id="same-instant-withdrawal-recorded-last",
    ),
    pytest.param(
        [withdraw("recommendations", NOW - DAY), grant("recommendations", NOW - DAY)],
        Outcome.ALLOW,
        Reason.CONSENT_GRANTED,
        id="same-instant-grant-recorded-last",
    ),
]


@pytest.mark.parametrize(("consents", "outcome", "reason"), CONSENT_HISTORIES)
def test_consent_purpose_follows_latest_record(
    policies: PolicySet, consents: list[ConsentEvent], outcome: Outcome, reason: Reason
) -> None:
    decision = run(policies, "recommendations", consents)

    assert decision.outcome is outcome
    assert decision.reasons == (reason,)
    assert decision.personalized is (outcome is Outcome.ALLOW)
    assert decision.policy_hash == policies.hash


EXPIRIES = [
    pytest.param(
        NOW - DAY,
        NOW + SECOND,
        Outcome.ALLOW,
        Reason.CONSENT_GRANTED,
        id="expires-at-one-second-ahead",
    ),
    pytest.param(NOW - DAY, NOW, Outcome.FALLBACK, Reason.CONSENT_EXPIRED, id="expires-at-now"),
    pytest.param(
        NOW - DAY,
        NOW - SECOND,
        Outcome.FALLBACK,
        Reason.CONSENT_EXPIRED,
        id="expires-at-one-second-ago",
    ),
    # recommendations has consent_max_age P13M: 2025-02-01 12:00 + 13 months is NOW.
    pytest.param(
        datetime(2025, 2, 1, 12, 0, 1, tzinfo=UTC),
        None,
        Outcome.ALLOW,
        Reason.CONSENT_GRANTED,
        id="max-age-one-second-left",
    ),
    pytest.param(
        datetime(2025, 2, 1, 11, 59, 59, tzinfo=UTC),
        None,
        Outcome.FALLBACK,
        Reason.CONSENT_EXPIRED,
        id="max-age-one-second-over",
    ),
    pytest.param(
        datetime(2025, 2, 1, 11, 59, 59, tzinfo=UTC),
        NOW + 30 * DAY,
        Outcome.FALLBACK,
        Reason.CONSENT_EXPIRED,
        id="max-age-wins-over-later-expires-at",
    ),
]


@pytest.mark.parametrize(("recorded_at", "expires_at", "outcome", "reason"), EXPIRIES)
def test_consent_expires(
    policies: PolicySet,
    recorded_at: datetime,
    expires_at: datetime | None,
    outcome: Outcome,
    reason: Reason,
) -> None:
    decision = run(policies, "recommendations", [grant("recommendations", recorded_at, expires_at)])

    assert decision.outcome is outcome
    assert decision.reasons == (reason,)


@pytest.mark.parametrize(
    ("consents", "outcome", "reason"),
    [
        pytest.param([], Outcome.ALLOW, Reason.LEGITIMATE_INTEREST, id="no-record"),
        pytest.param(
            [withdraw("email_marketing", NOW - DAY)], Outcome.DENY, Reason.OBJECTION, id="objection"
        ),
        pytest.param(
            [withdraw("email_marketing", NOW - 2 * DAY), grant("email_marketing", NOW - DAY)],
            Outcome.ALLOW,
            Reason.LEGITIMATE_INTEREST,
            id="objection-lifted",
        ),
        pytest.param(
            [grant("email_marketing", NOW - DAY, NOW - SECOND)],
            Outcome.ALLOW,
            Reason.LEGITIMATE_INTEREST,
            id="expired-grant-is-no-objection",
        ),
    ],
)
def test_legitimate_interest_allows_until_objection(
    policies: PolicySet, consents: list[ConsentEvent], outcome: Outcome, reason: Reason
) -> None:
    decision = run(policies, "email_marketing", consents)

    assert decision.outcome is outcome
    assert decision.reasons == (reason,)


@pytest.mark.parametrize(
    ("purpose", "gpc", "outcome", "reason"),
    [
        ("ads_personalization", True, Outcome.FALLBACK, Reason.GPC_OBJECTION),
        ("ads_personalization", False, Outcome.ALLOW, Reason.CONSENT_GRANTED),
        ("recommendations", True, Outcome.ALLOW, Reason.CONSENT_GRANTED),
        ("recommendations", False, Outcome.ALLOW, Reason.CONSENT_GRANTED),
    ],
)
def test_gpc_objects_only_where_honored(
    policies: PolicySet, purpose: str, gpc: bool, outcome: Outcome, reason: Reason
) -> None:
    decision = run(policies, purpose, granted(purpose), gpc=gpc)

    assert decision.outcome is outcome
    assert decision.reasons == (reason,)


def test_gpc_objection_on_legitimate_interest_denies(documents: Documents) -> None:
    replace_in(
        documents[0] / "purposes.yaml",
        "legal_basis: legitimate_interest\n    categories: [purchase_history, preferences, contact]"
        "\n    honor_gpc: false",
        "legal_basis: legitimate_interest\n    categories: [purchase_history, preferences, contact]"
        "\n    honor_gpc: true",
    )
    policies = load_policy_set(*documents)

    assert run(policies, "email_marketing", [], gpc=False).outcome is Outcome.ALLOW
    decision = run(policies, "email_marketing", [], gpc=True)
    assert decision.outcome is Outcome.DENY
    assert decision.reasons == (Reason.GPC_OBJECTION,)


# --- consent_status -------------------------------------------------------------------------------


def test_consent_status_reports_state_and_expiry(policies: PolicySet) -> None:
    purpose = policies.purposes["recommendations"]
    recorded = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    by_age = consent_status(purpose, [grant("recommendations", recorded)], NOW)
    own = consent_status(purpose, [grant("recommendations", recorded, NOW + DAY)], NOW)

    assert (by_age.state, by_age.lawful) == (ConsentState.GRANTED, True)
    assert by_age.expires_at == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert own.expires_at == NOW + DAY


@pytest.mark.parametrize(
    ("consents", "state", "lawful", "reason"),
    [
        ([], ConsentState.NEVER_ASKED, False, Reason.NO_CONSENT),
        (
            [grant("ads_personalization", NOW - DAY)],
            ConsentState.GRANTED,
            True,
            Reason.CONSENT_GRANTED,
        ),
        (
            [withdraw("ads_personalization", NOW - DAY)],
            ConsentState.WITHDRAWN,
            False,
            Reason.CONSENT_WITHDRAWN,
        ),
        # ads_personalization: consent_max_age P6M.
        (
            [grant("ads_personalization", datetime(2025, 9, 1, 12, 0, tzinfo=UTC))],
            ConsentState.EXPIRED,
            False,
            Reason.CONSENT_EXPIRED,
        ),
        (
            [grant("ads_personalization", datetime(2025, 9, 1, 12, 0, 1, tzinfo=UTC))],
            ConsentState.GRANTED,
            True,
            Reason.CONSENT_GRANTED,
        ),
    ],
)
def test_consent_status_for_consent_basis(
    policies: PolicySet,
    consents: list[ConsentEvent],
    state: ConsentState,
    lawful: bool,
    reason: Reason,
) -> None:
    status = consent_status(policies.purposes["ads_personalization"], consents, NOW)

    assert (status.state, status.lawful, status.reason) == (state, lawful, reason)


@pytest.mark.parametrize(
    "consents",
    [[], [withdraw("email_marketing", NOW - DAY)], [grant("email_marketing", NOW - DAY)]],
)
def test_consent_status_contract_is_always_lawful(
    policies: PolicySet, consents: list[ConsentEvent]
) -> None:
    purpose = dataclasses.replace(
        policies.purposes["email_marketing"], legal_basis=LegalBasis.CONTRACT
    )

    status = consent_status(purpose, consents, NOW)

    assert (status.lawful, status.reason) == (True, Reason.CONTRACT)


# --- registration ---------------------------------------------------------------------------------


def test_purpose_with_only_expired_registrations_falls_back(documents: Documents) -> None:
    # ads_personalization is registered in shop_events and mobile_location (expired 2025-12-31).
    registry = documents[1] / "databases.yaml"
    replace_in(registry, "review_by: 2027-06-30", "review_by: 2026-02-28")
    policies = load_policy_set(*documents)

    decision = run(policies, "ads_personalization", granted("ads_personalization"))

    assert decision.outcome is Outcome.FALLBACK
    assert decision.reasons == (Reason.REGISTRATION_EXPIRED,)
    assert run(policies, "recommendations", granted("recommendations")).outcome is Outcome.ALLOW


@pytest.mark.parametrize(
    ("now", "outcome", "reasons"),
    [
        # shop_events, the last live registration of ads_personalization, is reviewed by
        # 2027-06-30: that whole day counts.
        (datetime(2027, 6, 30, 23, 59, 59, tzinfo=UTC), Outcome.ALLOW, (Reason.CONSENT_GRANTED,)),
        (
            datetime(2027, 7, 1, 0, 0, 0, tzinfo=UTC),
            Outcome.FALLBACK,
            (Reason.REGISTRATION_EXPIRED,),
        ),
    ],
)
def test_registration_expires_after_its_review_date(
    policies: PolicySet, now: datetime, outcome: Outcome, reasons: tuple[Reason, ...]
) -> None:
    consents = [grant("ads_personalization", now - DAY)]

    decision = run(policies, "ads_personalization", consents, now=now)

    assert (decision.outcome, decision.reasons) == (outcome, reasons)


def test_purpose_without_registered_database_is_denied(documents: Documents) -> None:
    replace_in(
        documents[1] / "databases.yaml",
        "purposes: [recommendations, email_marketing]",
        "purposes: [recommendations]",
    )
    policies = load_policy_set(*documents)

    decision = run(policies, "email_marketing", [], [attribute("crm", "email")])

    # email_marketing has fallback none, so no ranking at all.
    assert decision.outcome is Outcome.DENY
    assert decision.reasons == (Reason.NO_REGISTERED_DATABASE,)
    assert decision.reads == ReadPlan()


def test_registration_is_checked_before_consent(documents: Documents) -> None:
    replace_in(
        documents[1] / "databases.yaml",
        "purposes: [recommendations, email_marketing]",
        "purposes: [recommendations]",
    )
    policies = load_policy_set(*documents)

    decision = run(policies, "email_marketing", [withdraw("email_marketing", NOW - DAY)])

    assert decision.reasons == (Reason.NO_REGISTERED_DATABASE,)


# --- minimization ---------------------------------------------------------------------------------

KEPT = {
    "recommendations": (event("crm", "purchase"), "purchase_history"),
    "email_marketing": (event("crm", "purchase"), "purchase_history"),
    "ads_personalization": (event("shop_events", "view"), "browsing"),
}

DROPS = [
    pytest.param(
        "recommendations",
        attribute("crm", "email"),
        "email",
        Reason.NOT_NEEDED_FOR_PURPOSE,
        id="category-not-allowed-for-purpose",
    ),
    pytest.param(
        "email_marketing",
        event("shop_events", "purchase"),
        "purchase_history",
        Reason.PURPOSE_NOT_REGISTERED,
        id="database-not-registered-for-purpose",
    ),
    pytest.param(
        "recommendations",
        event("legacy_dwh", "view"),
        "browsing",
        Reason.UNREGISTERED_DATABASE,
        id="database-missing-from-registry",
    ),
    pytest.param(
        "ads_personalization",
        event("mobile_location", "view"),
        "browsing",
        Reason.REGISTRATION_EXPIRED,
        id="expired-registration",
    ),
    pytest.param(
        "recommendations",
        attribute("shop_events", "favorite_brand"),
        "favorite_brand",
        Reason.CATEGORY_NOT_REGISTERED,
        id="category-not-registered-in-database",
    ),
    pytest.param(
        "recommendations",
        attribute("crm", "zodiac"),
        "zodiac",
        Reason.UNKNOWN_ATTRIBUTE,
        id="unknown-attribute",
    ),
    pytest.param(
        "recommendations",
        event("shop_events", "teleport"),
        "teleport",
        Reason.UNKNOWN_EVENT_TYPE,
        id="unknown-event-type",
    ),
]


@pytest.mark.parametrize(("purpose", "holding", "field", "reason"), DROPS)
def test_minimization_holds_back(
    policies: PolicySet, purpose: str, holding: Holding, field: str, reason: Reason
) -> None:
    # One item the purpose may read, beside the one held back.
    kept, category = KEPT[purpose]
    decision = run(policies, purpose, granted(purpose), [holding, kept])

    assert decision.outcome is Outcome.ALLOW
    assert decision.fields_dropped == (Dropped(field, holding.database, reason, 1),)
    assert decision.fields_used == (category,)
    read = {(db, name) for db, name in decision.reads.attributes}
    read |= {(db, name) for db, name, _ in decision.reads.events}
    assert read == {(kept.database, kept.name)}


def test_minimization_counts_each_dropped_field(policies: PolicySet) -> None:
    holdings = [event("legacy_dwh", "view"), event("legacy_dwh", "click"), event("crm", "view")]

    decision = run(policies, "recommendations", granted("recommendations"), holdings)

    assert decision.fields_dropped == (
        Dropped("browsing", "crm", Reason.CATEGORY_NOT_REGISTERED, 1),
        Dropped("browsing", "legacy_dwh", Reason.UNREGISTERED_DATABASE, 2),
    )
    assert decision.fields_used == ()
    assert decision.reads == ReadPlan()


@pytest.fixture
def sensitive_policies(documents: Documents) -> PolicySet:
    """location (sensitive) also allowed to email_marketing (legitimate interest) through crm,
    and mobile_location reviewed again so ads_personalization (consent) may read it."""
    replace_in(
        documents[0] / "purposes.yaml",
        "categories: [purchase_history, preferences, contact]",
        "categories: [purchase_history, preferences, contact, location]",
    )
    replace_in(
        documents[1] / "databases.yaml",
        "categories: [preferences, contact, purchase_history]",
        "categories: [preferences, contact, purchase_history, location]",
    )
    replace_in(documents[1] / "databases.yaml", "review_by: 2025-12-31", "review_by: 2030-12-31")
    return load_policy_set(*documents)


@pytest.mark.parametrize(
    ("purpose", "database", "used", "dropped"),
    [
        (
            "email_marketing",
            "crm",
            (),
            (Dropped("home_city", "crm", Reason.SENSITIVE_NEEDS_CONSENT),),
        ),
        ("ads_personalization", "mobile_location", ("home_city",), ()),
    ],
)
def test_sensitive_category_needs_consent(
    sensitive_policies: PolicySet,
    purpose: str,
    database: str,
    used: tuple[str, ...],
    dropped: tuple[Dropped, ...],
) -> None:
    decision = run(
        sensitive_policies, purpose, granted(purpose), [attribute(database, "home_city")]
    )

    assert decision.outcome is Outcome.ALLOW
    assert decision.fields_used == used
    assert decision.fields_dropped == dropped


@pytest.mark.parametrize(
    ("holding", "field", "retention"),
    [
        (EVENT, "browsing", timedelta(days=90)),
        (EVENT, "purchase_history", timedelta(days=365)),
        (ATTRIBUTE, "shoe_size", timedelta(days=730)),
    ],
)
def test_retention_boundary(
    policies: PolicySet, holding: HoldingKind, field: str, retention: timedelta
) -> None:
    name = {"browsing": "view", "purchase_history": "purchase"}.get(field, field)
    database = "shop_events" if holding is EVENT else "crm"
    inside = [Holding(database, holding, name, NOW - retention + SECOND)] * 2
    outside = [Holding(database, holding, name, NOW - retention - SECOND)] * 3

    fresh = run(policies, "recommendations", granted("recommendations"), inside)
    mixed = run(policies, "recommendations", granted("recommendations"), inside + outside)
    stale = run(policies, "recommendations", granted("recommendations"), outside)

    assert (fresh.fields_used, fresh.fields_dropped) == ((field,), ())
    expired = (Dropped(field, database, Reason.RETENTION_EXPIRED, 3),)
    assert (mixed.fields_used, mixed.fields_dropped) == ((field,), expired)
    assert (stale.fields_used, stale.fields_dropped) == ((), expired)
    assert stale.reads == ReadPlan()
    assert stale.outcome is Outcome.ALLOW


def test_read_plan_lists_exactly_what_may_be_read(policies: PolicySet) -> None:
    holdings = [
        attribute("crm", "favorite_brand"),
        attribute("crm", "shoe_size"),
        attribute("crm", "shoe_size", NOW - 2 * DAY),
        attribute("crm", "email"),
        event("crm", "purchase"),
        event("shop_events", "purchase"),
        event("shop_events", "view"),
        event("shop_events", "add_to_cart", NOW - 100 * DAY),
    ]

    decision = run(policies, "recommendations", granted("recommendations"), holdings)

    assert decision.outcome is Outcome.ALLOW
    assert decision.reasons == (Reason.CONSENT_GRANTED,)
    assert decision.fields_used == ("browsing", "favorite_brand", "purchase_history", "shoe_size")
    assert decision.fields_dropped == (
        Dropped("browsing", "shop_events", Reason.RETENTION_EXPIRED),
        Dropped("email", "crm", Reason.NOT_NEEDED_FOR_PURPOSE),
    )
    assert decision.reads == ReadPlan(
        attributes=(("crm", "favorite_brand"), ("crm", "shoe_size")),
        events=(
            ("crm", "purchase", NOW - timedelta(days=365)),
            ("shop_events", "purchase", NOW - timedelta(days=365)),
            ("shop_events", "view", NOW - timedelta(days=90)),
        ),
        # purchases one by one, from the purpose's exclusion window (30 days) on
        items=(
            ("crm", "purchase", NOW - timedelta(days=30)),
            ("shop_events", "purchase", NOW - timedelta(days=30)),
        ),
    )


@pytest.mark.parametrize(
    ("purpose", "consents", "gpc", "outcome"),
    [
        ("recommendations", [], False, Outcome.FALLBACK),
        ("ads_personalization", granted("ads_personalization"), True, Outcome.FALLBACK),
        ("email_marketing", [withdraw("email_marketing", NOW - DAY)], False, Outcome.DENY),
    ],
)
def test_fallback_and_deny_read_nothing(
    policies: PolicySet, purpose: str, consents: list[ConsentEvent], gpc: bool, outcome: Outcome
) -> None:
    holdings = [
        attribute("crm", "favorite_brand"),
        attribute("crm", "email"),
        event("shop_events", "view"),
        event("crm", "purchase"),
    ]

    decision = run(policies, purpose, consents, holdings, gpc=gpc)

    assert decision.outcome is outcome
    assert decision.personalized is False
    assert decision.fields_used == ()
    assert decision.fields_dropped == ()
    assert decision.reads == ReadPlan()


# --- admit ----------------------------------------------------------------------------------------

ADMISSIONS = [
    pytest.param(ATTRIBUTE, "zodiac", "crm", NOW, Reason.UNKNOWN_ATTRIBUTE, id="unknown-attribute"),
    pytest.param(
        EVENT, "teleport", "shop_events", NOW, Reason.UNKNOWN_EVENT_TYPE, id="unknown-event-type"
    ),
    pytest.param(
        ATTRIBUTE,
        "email",
        "shop_events",
        NOW,
        Reason.CATEGORY_NOT_REGISTERED,
        id="attribute-category-not-registered",
    ),
    pytest.param(
        EVENT,
        "view",
        "crm",
        NOW,
        Reason.CATEGORY_NOT_REGISTERED,
        id="event-category-not-registered",
    ),
    pytest.param(
        ATTRIBUTE,
        "home_city",
        "mobile_location",
        NOW,
        Reason.REGISTRATION_EXPIRED,
        id="registration-expired",
    ),
    pytest.param(
        EVENT,
        "view",
        "shop_events",
        NOW - timedelta(days=90) - SECOND,
        Reason.STALE,
        id="stale-by-one-second",
    ),
    pytest.param(
        EVENT,
        "view",
        "shop_events",
        NOW - timedelta(days=90) + SECOND,
        None,
        id="fresh-by-one-second",
    ),
    pytest.param(
        EVENT,
        "purchase",
        "crm",
        NOW - timedelta(days=365) - SECOND,
        Reason.STALE,
        id="stale-purchase",
    ),
    pytest.param(
        EVENT, "purchase", "crm", NOW - timedelta(days=365) + SECOND, None, id="fresh-purchase"
    ),
    pytest.param(
        EVENT,
        "view",
        "shop_events",
        NOW + timedelta(minutes=5, seconds=1),
        Reason.FUTURE_TIMESTAMP,
        id="beyond-clock-skew",
    ),
    pytest.param(
        EVENT, "view", "shop_events", NOW + timedelta(minutes=5), None, id="within-clock-skew"
    ),
    pytest.param(ATTRIBUTE, "favorite_brand", "crm", NOW, None, id="accepted-attribute"),
    pytest.param(ATTRIBUTE, "email", "crm", NOW, None, id="accepted-pii-attribute"),
    pytest.param(EVENT, "add_to_cart", "shop_events", NOW - DAY, None, id="accepted-event"),
]


@pytest.mark.parametrize(("kind", "name", "database", "at", "reason"), ADMISSIONS)
def test_admit(
    policies: PolicySet,
    kind: HoldingKind,
    name: str,
    database: str,
    at: datetime,
    reason: Reason | None,
) -> None:
    assert admit(kind, name, policies.databases[database], policies, at, NOW) is reason


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC), None),
        (datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC), Reason.REGISTRATION_EXPIRED),
    ],
)
def test_admit_refuses_after_review_date(
    policies: PolicySet, now: datetime, reason: Reason | None
) -> None:
    registration = policies.databases["mobile_location"]

    assert admit(EVENT, "store_visit", registration, policies, now, now) is reason


def test_admit_refuses_data_no_purpose_needs(documents: Documents) -> None:
    # crm holds contact data only for email_marketing; without it nobody may use contact.
    policies = load_policy_set(*documents)
    crm = policies.databases["crm"]
    assert admit(ATTRIBUTE, "email", crm, policies, NOW, NOW) is None
    replace_in(
        documents[1] / "databases.yaml",
        "purposes: [recommendations, email_marketing]",
        "purposes: [recommendations]",
    )
    edited = load_policy_set(*documents)

    reason = admit(ATTRIBUTE, "email", edited.databases["crm"], edited, NOW, NOW)

    assert reason is Reason.NO_PURPOSE_NEEDS_IT
    assert admit(ATTRIBUTE, "favorite_brand", edited.databases["crm"], edited, NOW, NOW) is None


@pytest.mark.parametrize(
    ("writer", "name", "reason"),
    [
        (None, "email", None),
        (("email_marketing",), "email", None),
        (("recommendations", "ads_personalization"), "email", Reason.PURPOSE_NOT_GRANTED),
        (("recommendations",), "favorite_brand", None),
        (("email_marketing",), "favorite_brand", None),
        ((), "favorite_brand", Reason.PURPOSE_NOT_GRANTED),
    ],
)
def test_admit_takes_only_what_a_purpose_of_the_writer_uses(
    policies: PolicySet, writer: tuple[str, ...] | None, name: str, reason: Reason | None
) -> None:
    crm = policies.databases["crm"]

    assert admit(ATTRIBUTE, name, crm, policies, NOW, NOW, writer) is reason
