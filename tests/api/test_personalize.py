"""POST /v1/personalize end to end: data seeded through the API, decisions read from the answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
import yaml
from flask import Flask

import gateway
from gateway import scoring
from gateway.store.db import database
from gateway.store.models import Attribute, AuditEntry, ConsentRecord, Event, Subject
from tests.conftest import Caller
from tests.stores import raw

# The demo registrations have review dates, so every test runs on a known calendar day:
# shop_events and crm are active then, mobile_location (review_by 2025-12-31) is not.
DEMO_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SUBJECT = "customer-8841"
NOTICE = {"source": "cookie_banner", "notice_version": "2026-05"}
BROWSING_RETENTION = timedelta(days=90)

Json = dict[str, Any]


@pytest.fixture(autouse=True)
def demo_clock() -> Iterator[None]:
    """Pin the calendar (the clock still ticks) so registration review dates are known."""
    with time_machine.travel(DEMO_NOW, tick=True):
        yield


def set_consent(caller: Caller, purpose: str, granted: bool = True, subject: str = SUBJECT) -> None:
    path = f"/v1/subjects/{subject}/consents/{purpose}"
    response = caller.put(path, json={"granted": granted, **NOTICE})
    assert response.status_code == 200, response.get_json()


def event(kind: str, item_id: str, category: str, at: datetime) -> Json:
    return {"type": kind, "item_id": item_id, "category": category, "at": at.isoformat()}


def collect(caller: Caller, database_id: str, events: list[Json], subject: str = SUBJECT) -> None:
    body = {"database": database_id, "events": events}
    response = caller.post(f"/v1/subjects/{subject}/events", json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"accepted": list(range(len(events))), "refused": {}}


def set_attributes(
    caller: Caller, database_id: str, values: dict[str, Any], subject: str = SUBJECT
) -> None:
    body = {"database": database_id, "attributes": values}
    response = caller.patch(f"/v1/subjects/{subject}/attributes", json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"accepted": sorted(values), "refused": {}}


def candidate(item_id: str, category: str, **extra: Any) -> Json:
    return {"id": item_id, "category": category, **extra}


def personalize(
    caller: Caller,
    purpose: str,
    candidates: list[Json],
    *,
    explain: bool = False,
    headers: dict[str, str] | None = None,
    subject: str = SUBJECT,
    **extra: Any,
) -> Json:
    path = "/v1/personalize?explain=true" if explain else "/v1/personalize"
    body = {"subject_id": subject, "purpose": purpose, "candidates": candidates, **extra}
    response = caller.post(path, json=body, headers=headers or {})
    assert response.status_code == 200, response.get_json()
    result: Json = response.get_json()
    return result


def ids(result: Json) -> list[str]:
    return [item["id"] for item in result["items"]]


def scores(result: Json) -> dict[str, float]:
    return {item["id"]: item["score"] for item in result["items"]}


def views(item_category: str, count: int, at: datetime, prefix: str = "v") -> list[Json]:
    return [event("view", f"{prefix}-{item_category}-{n}", item_category, at) for n in range(count)]


def policy_hash(app: Flask) -> str:
    with app.app_context():
        return gateway.policies().hash


@pytest.fixture
def scorer_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what the real scorer is given (and still run it), to see what reached it."""
    calls: list[dict[str, Any]] = []
    real_rank = scoring.rank

    def spy(
        candidates: Any, profile: scoring.Profile, rules: Any, *, now: datetime, limit: int
    ) -> scoring.Ranking:
        calls.append({"candidates": candidates, "profile": profile, "now": now, "limit": limit})
        return real_rank(candidates, profile, rules, now=now, limit=limit)

    monkeypatch.setattr(scoring, "rank", spy)
    return calls


def edit_registry(registry: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = registry / "databases.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(document["databases"])
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


def count_rows(app: Flask, model: Any) -> int:
    with app.app_context(), database.connection_context():
        found: int = model.select().count()
        return found


# --- consent granted ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recent", "older"),
    [("shoes", "books"), ("books", "shoes")],
)
def test_consent_granted_ranks_by_recent_category_affinity(
    app: Flask, shop: Caller, admin: Caller, recent: str, older: str
) -> None:
    set_consent(shop, "recommendations")
    now = datetime.now(UTC)
    # Two views four weeks ago (two half-lives) weigh less than one view today.
    collect(shop, "shop_events", views(recent, 1, now) + views(older, 2, now - timedelta(days=28)))

    result = personalize(
        shop,
        "recommendations",
        [candidate("hat-1", "hats"), candidate("b-1", "books"), candidate("s-1", "shoes")],
    )

    assert result["outcome"] == "allow"
    assert result["personalized"] is True
    assert result["reasons"] == ["consent_granted"]
    first = {"shoes": "s-1", "books": "b-1"}
    assert ids(result) == [first[recent], first[older], "hat-1"]
    assert scores(result)[first[recent]] == 1.0
    assert 0 < scores(result)[first[older]] < 1.0
    assert scores(result)["hat-1"] == 0.0
    assert result["fields_used"] == ["browsing"]
    assert result["fields_dropped"] == []
    assert "excluded" not in result
    assert result["policy_hash"] == policy_hash(app)
    assert result["policy_hash"] == admin.get("/v1/policies").get_json()["policy_hash"]


def test_fields_used_lists_data_categories_and_attribute_names(shop: Caller) -> None:
    set_consent(shop, "recommendations")
    now = datetime.now(UTC)
    collect(shop, "shop_events", views("shoes", 1, now))
    collect(shop, "crm", [event("purchase", "b-9", "books", now - timedelta(days=40))])
    set_attributes(shop, "crm", {"favorite_brand": "acme", "shoe_size": 42})

    result = personalize(shop, "recommendations", [candidate("s-1", "shoes")])

    assert result["fields_used"] == ["browsing", "favorite_brand", "purchase_history", "shoe_size"]
    assert result["fields_dropped"] == []


# --- no consent --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("popularity", "expected"),
    [
        ({"m": 3.0, "z": 10.0, "a": 7.0}, ["z", "a", "m"]),
        ({"m": 1.0, "z": 2.0, "a": 1.0}, ["z", "m", "a"]),
        ({}, ["m", "z", "a"]),
    ],
    ids=["by-popularity", "popularity-ties-in-caller-order", "no-popularity-caller-order"],
)
def test_no_consent_falls_back_to_popularity_without_personal_data(
    shop: Caller,
    scorer_calls: list[dict[str, Any]],
    popularity: dict[str, float],
    expected: list[str],
) -> None:
    # Plenty of data is held, but without consent none of it may be read.
    collect(shop, "shop_events", views("shoes", 5, datetime.now(UTC)))
    set_attributes(shop, "crm", {"favorite_brand": "acme"})
    candidates = [
        candidate(item_id, category, **({"popularity": popularity[item_id]} if popularity else {}))
        for item_id, category in (("m", "books"), ("z", "hats"), ("a", "shoes"))
    ]

    result = personalize(shop, "recommendations", candidates)

    assert result["outcome"] == "fallback"
    assert result["personalized"] is False
    assert result["reasons"] == ["no_consent"]
    assert ids(result) == expected
    assert scores(result) == {item_id: popularity.get(item_id, 0.0) for item_id in expected}
    assert result["fields_used"] == []
    assert result["fields_dropped"] == []
    assert scorer_calls == []


def test_fallback_for_a_subject_never_seen(shop: Caller) -> None:
    result = personalize(
        shop, "recommendations", [candidate("x", "books"), candidate("y", "shoes", popularity=2)]
    )
    assert (result["outcome"], result["reasons"]) == ("fallback", ["no_consent"])
    assert ids(result) == ["y", "x"]


# --- withdrawal --------------------------------------------------------------------------------


@pytest.mark.parametrize("tick", [True, False], ids=["ticking-clock", "same-instant"])
def test_withdrawal_is_effective_on_the_very_next_request(shop: Caller, tick: bool) -> None:
    candidates = [candidate("b-1", "books"), candidate("s-1", "shoes")]
    with time_machine.travel(datetime.now(UTC), tick=tick):
        collect(shop, "shop_events", views("shoes", 2, datetime.now(UTC)))
        set_consent(shop, "recommendations", granted=True)
        allowed = personalize(shop, "recommendations", candidates)
        set_consent(shop, "recommendations", granted=False)
        withdrawn = personalize(shop, "recommendations", candidates)
        set_consent(shop, "recommendations", granted=True)
        granted_again = personalize(shop, "recommendations", candidates)

    assert (allowed["outcome"], allowed["reasons"]) == ("allow", ["consent_granted"])
    assert ids(allowed) == ["s-1", "b-1"]
    assert withdrawn["outcome"] == "fallback"
    assert withdrawn["personalized"] is False
    assert withdrawn["reasons"] == ["consent_withdrawn"]
    assert withdrawn["fields_used"] == []
    assert ids(withdrawn) == ["b-1", "s-1"]
    assert (granted_again["outcome"], ids(granted_again)) == ("allow", ["s-1", "b-1"])


@pytest.mark.parametrize(
    ("after", "outcome", "reasons"),
    [
        (timedelta(seconds=-1), "allow", ["consent_granted"]),
        (timedelta(seconds=1), "fallback", ["consent_expired"]),
    ],
    ids=["just-before-max-age", "just-past-max-age"],
)
def test_grant_older_than_the_purpose_max_age_no_longer_counts(
    shop: Caller, after: timedelta, outcome: str, reasons: list[str]
) -> None:
    # ads_personalization re-asks after consent_max_age P6M.
    with time_machine.travel(DEMO_NOW, tick=False):
        set_consent(shop, "ads_personalization")
    with time_machine.travel(datetime(2026, 12, 1, 12, 0, tzinfo=UTC) + after, tick=False):
        result = personalize(shop, "ads_personalization", [candidate("s-1", "shoes")])

    assert (result["outcome"], result["reasons"]) == (outcome, reasons)


# --- legitimate interest -----------------------------------------------------------------------


def test_email_marketing_needs_no_record_and_is_denied_after_an_objection(mailer: Caller) -> None:
    now = datetime.now(UTC)
    collect(mailer, "crm", [event("purchase", "old-book", "books", now - timedelta(days=90))])
    candidates = [candidate("s-1", "shoes"), candidate("b-1", "books")]

    allowed = personalize(mailer, "email_marketing", candidates)
    set_consent(mailer, "email_marketing", granted=False)
    objected = personalize(mailer, "email_marketing", candidates)

    assert allowed["outcome"] == "allow"
    assert allowed["personalized"] is True
    assert allowed["reasons"] == ["legitimate_interest"]
    assert allowed["fields_used"] == ["purchase_history"]
    assert ids(allowed) == ["b-1", "s-1"]
    assert objected["outcome"] == "deny"
    assert objected["personalized"] is False
    assert objected["reasons"] == ["objection"]
    assert objected["items"] == []
    assert objected["fields_used"] == []


# --- Global Privacy Control --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "gpc", "outcome", "reason"),
    [
        ("ads_personalization", "1", "fallback", "gpc_objection"),
        ("ads_personalization", "0", "allow", "consent_granted"),
        ("ads_personalization", None, "allow", "consent_granted"),
        ("recommendations", "1", "allow", "consent_granted"),
        ("recommendations", None, "allow", "consent_granted"),
    ],
)
def test_gpc_is_an_objection_only_where_the_purpose_honors_it(
    shop: Caller, purpose: str, gpc: str | None, outcome: str, reason: str
) -> None:
    set_consent(shop, purpose)
    collect(shop, "shop_events", views("shoes", 3, datetime.now(UTC)))
    candidates = [candidate("b-1", "books", popularity=9), candidate("s-1", "shoes", popularity=1)]

    result = personalize(shop, purpose, candidates, headers={"Sec-GPC": gpc} if gpc else {})

    assert (result["outcome"], result["reasons"]) == (outcome, [reason])
    assert result["personalized"] is (outcome == "allow")
    if outcome == "allow":
        assert (ids(result), result["fields_used"]) == (["s-1", "b-1"], ["browsing"])
    else:
        assert (ids(result), result["fields_used"]) == (["b-1", "s-1"], [])


# --- registration ------------------------------------------------------------------------------


def _unregister(databases: dict[str, Any]) -> None:
    del databases["shop_events"]


def _expire(databases: dict[str, Any]) -> None:
    databases["shop_events"]["review_by"] = DEMO_NOW.date() - timedelta(days=1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [(_unregister, "unregistered_database"), (_expire, "registration_expired")],
    ids=["unregistered", "past-review-date"],
)
def test_data_in_a_database_no_longer_registered_is_dropped(
    app: Flask,
    shop: Caller,
    make_app: Callable[..., Flask],
    documents: tuple[Path, Path],
    change: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    set_consent(shop, "recommendations")
    collect(shop, "shop_events", views("shoes", 4, datetime.now(UTC)))
    set_attributes(shop, "crm", {"favorite_brand": "acme"})
    candidates = [candidate("b-1", "books", features={"brand": "acme"}), candidate("s-1", "shoes")]
    before = personalize(shop, "recommendations", candidates)

    edit_registry(documents[1], change)
    rebuilt = make_app()
    after = personalize(Caller(rebuilt.test_client(), shop.key), "recommendations", candidates)

    assert before["fields_used"] == ["browsing", "favorite_brand"]
    assert before["fields_dropped"] == []
    assert scores(before) == {"s-1": 1.0, "b-1": 0.5}
    assert (after["outcome"], after["reasons"]) == ("allow", ["consent_granted"])
    assert after["fields_used"] == ["favorite_brand"]
    assert after["fields_dropped"] == [
        {"field": "browsing", "database": "shop_events", "reason": reason, "count": 4}
    ]
    assert ids(after) == ["b-1", "s-1"]
    assert scores(after) == {"b-1": 0.5, "s-1": 0.0}
    assert after["policy_hash"] == policy_hash(rebuilt) != before["policy_hash"]


@pytest.mark.parametrize(
    ("review_by", "outcome", "reasons"),
    [
        (DEMO_NOW.date(), "allow", ["consent_granted"]),
        (DEMO_NOW.date() - timedelta(days=1), "fallback", ["registration_expired"]),
    ],
    ids=["review-date-today", "review-date-yesterday"],
)
def test_purpose_whose_every_registration_expired_falls_back(
    shop: Caller,
    make_app: Callable[..., Flask],
    documents: tuple[Path, Path],
    review_by: date,
    outcome: str,
    reasons: list[str],
) -> None:
    # ads_personalization is registered in shop_events and in mobile_location (already expired).
    set_consent(shop, "ads_personalization")
    collect(shop, "shop_events", views("shoes", 2, datetime.now(UTC)))
    edit_registry(documents[1], lambda dbs: dbs["shop_events"].update(review_by=review_by))
    rebuilt = Caller(make_app().test_client(), shop.key)

    result = personalize(
        rebuilt, "ads_personalization", [candidate("b-1", "books"), candidate("s-1", "shoes")]
    )

    assert (result["outcome"], result["reasons"]) == (outcome, reasons)
    assert result["personalized"] is (outcome == "allow")
    if outcome == "allow":
        assert (ids(result), result["fields_used"]) == (["s-1", "b-1"], ["browsing"])
    else:
        assert (ids(result), result["fields_used"]) == (["b-1", "s-1"], [])


# --- retention ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "browsing_counts"),
    [
        (BROWSING_RETENTION - timedelta(seconds=1), True),
        # DESIGN: only data *younger* than the retention reaches the scorer.
        (BROWSING_RETENTION, False),
        (BROWSING_RETENTION + timedelta(seconds=1), False),
    ],
    ids=["one-second-before", "at-the-boundary", "one-second-past"],
)
def test_browsing_past_its_retention_is_ignored(
    shop: Caller, age: timedelta, browsing_counts: bool
) -> None:
    stored_at = DEMO_NOW
    with time_machine.travel(stored_at, tick=False):
        set_consent(shop, "recommendations")
        collect(shop, "shop_events", views("shoes", 10, stored_at))
        collect(shop, "shop_events", [event("purchase", "b-0", "books", stored_at)])
    candidates = [candidate("s-1", "shoes"), candidate("b-1", "books")]

    with time_machine.travel(stored_at + age, tick=False):
        result = personalize(shop, "recommendations", candidates, explain=True)

    assert result["outcome"] == "allow"
    if browsing_counts:
        # Ten views (weight 0.5) outweigh one purchase (weight 3) of the same age.
        assert result["fields_used"] == ["browsing", "purchase_history"]
        assert result["fields_dropped"] == []
        assert scores(result) == {"s-1": 1.0, "b-1": 0.6}
        assert ids(result) == ["s-1", "b-1"]
    else:
        assert result["fields_used"] == ["purchase_history"]
        assert result["fields_dropped"] == [
            {
                "field": "browsing",
                "database": "shop_events",
                "reason": "retention_expired",
                "count": 10,
            }
        ]
        assert scores(result) == {"b-1": 1.0, "s-1": 0.0}
        assert ids(result) == ["b-1", "s-1"]
        assert result["items"][1]["contributions"] == {}


@pytest.mark.parametrize(
    "age", [BROWSING_RETENTION, BROWSING_RETENTION + timedelta(days=1)], ids=["boundary", "past"]
)
def test_expired_events_are_not_read_beside_fresh_ones_of_the_same_type(
    shop: Caller, scorer_calls: list[dict[str, Any]], age: timedelta
) -> None:
    with time_machine.travel(DEMO_NOW, tick=False):
        set_consent(shop, "recommendations")
        collect(shop, "shop_events", views("shoes", 10, DEMO_NOW))
    later = DEMO_NOW + age
    with time_machine.travel(later, tick=False):
        collect(shop, "shop_events", views("books", 1, later))
        result = personalize(
            shop, "recommendations", [candidate("s-1", "shoes"), candidate("b-1", "books")]
        )

    assert result["fields_used"] == ["browsing"]
    assert result["fields_dropped"] == [
        {"field": "browsing", "database": "shop_events", "reason": "retention_expired", "count": 10}
    ]
    assert [t.item_category for t in scorer_calls[0]["profile"].tallies] == ["books"]
    assert scores(result) == {"b-1": 1.0, "s-1": 0.0}


# --- minimization ------------------------------------------------------------------------------


def test_attribute_outside_the_allowlist_never_reaches_the_scorer(
    shop: Caller, mailer: Caller, scorer_calls: list[dict[str, Any]]
) -> None:
    set_consent(shop, "recommendations")
    # the mailer's purpose uses contact data; the shop's does not, so it holds it back
    set_attributes(mailer, "crm", {"favorite_brand": "acme", "email": "ana@example.com"})
    candidates = [candidate("b-1", "books"), candidate("s-1", "shoes", features={"brand": "acme"})]

    response = shop.post(
        "/v1/personalize",
        json={"subject_id": SUBJECT, "purpose": "recommendations", "candidates": candidates},
    )

    result = response.get_json()
    assert response.status_code == 200
    assert len(scorer_calls) == 1
    profile = scorer_calls[0]["profile"]
    assert dict(profile.attributes) == {"favorite_brand": "acme"}
    assert "email" not in profile.attributes
    assert result["fields_used"] == ["favorite_brand"]
    assert result["fields_dropped"] == [
        {"field": "email", "database": "crm", "reason": "not_needed_for_purpose", "count": 1}
    ]
    assert ids(result) == ["s-1", "b-1"]
    assert "ana@example.com" not in response.get_data(as_text=True)


def test_attribute_inside_the_allowlist_reaches_the_scorer(
    mailer: Caller, scorer_calls: list[dict[str, Any]]
) -> None:
    set_attributes(mailer, "crm", {"favorite_brand": "acme", "email": "ana@example.com"})

    result = personalize(mailer, "email_marketing", [candidate("b-1", "books")])

    assert len(scorer_calls) == 1
    assert dict(scorer_calls[0]["profile"].attributes) == {
        "favorite_brand": "acme",
        "email": "ana@example.com",
    }
    assert result["fields_used"] == ["email", "favorite_brand"]
    assert result["fields_dropped"] == []


# --- explain -----------------------------------------------------------------------------------


@pytest.mark.parametrize("explain", [True, False])
def test_explain_adds_contributions_and_the_excluded_purchases(shop: Caller, explain: bool) -> None:
    now = datetime.now(UTC)
    set_consent(shop, "recommendations")
    collect(shop, "shop_events", views("shoes", 2, now))
    collect(shop, "shop_events", [event("purchase", "s-bought", "shoes", now - timedelta(days=2))])
    set_attributes(shop, "crm", {"favorite_brand": "acme"})
    candidates = [
        candidate("s-bought", "shoes", features={"brand": "acme"}),
        candidate("b-1", "books", features={"brand": "acme"}),
        candidate("s-2", "shoes", features={"brand": "zeta"}),
        candidate("s-3", "shoes", features={"brand": "acme"}),
        candidate("h-1", "hats"),
    ]

    result = personalize(shop, "recommendations", candidates, explain=explain)

    assert ids(result) == ["s-3", "s-2", "b-1", "h-1"]
    assert scores(result) == {"s-3": 1.5, "s-2": 1.0, "b-1": 0.5, "h-1": 0.0}
    if explain:
        assert [item.get("contributions") for item in result["items"]] == [
            {"affinity:shoes": 1.0, "segment:favorite_brand": 0.5},
            {"affinity:shoes": 1.0},
            {"segment:favorite_brand": 0.5},
            {},
        ]
        assert result["excluded"] == ["s-bought"]
    else:
        assert all("contributions" not in item for item in result["items"])
        assert "excluded" not in result


@pytest.mark.parametrize(
    ("bought_ago", "excluded"),
    [
        (timedelta(days=30) - timedelta(seconds=1), True),
        (timedelta(days=30) + timedelta(seconds=1), False),
    ],
    ids=["inside-window", "outside-window"],
)
def test_purchase_exclusion_follows_the_purpose_window(
    shop: Caller, bought_ago: timedelta, excluded: bool
) -> None:
    candidates = [candidate("s-bought", "shoes"), candidate("b-1", "books")]
    with time_machine.travel(DEMO_NOW, tick=False):
        set_consent(shop, "recommendations")
        collect(
            shop, "shop_events", [event("purchase", "s-bought", "shoes", DEMO_NOW - bought_ago)]
        )
        result = personalize(shop, "recommendations", candidates, explain=True)

    assert result["excluded"] == (["s-bought"] if excluded else [])
    assert ids(result) == (["b-1"] if excluded else ["s-bought", "b-1"])


def test_fallback_items_explain_only_popularity(shop: Caller) -> None:
    result = personalize(
        shop, "recommendations", [candidate("a", "books", popularity=2)], explain=True
    )
    assert result["outcome"] == "fallback"
    assert result["items"] == [{"id": "a", "score": 2.0, "contributions": {"popularity": 2.0}}]
    assert result["excluded"] == []


# --- limit and ties ----------------------------------------------------------------------------


# The caller's order is deliberately not the alphabetical order of the ids.
LIMIT_CANDIDATES = [
    candidate("s-9", "shoes", popularity=1),
    candidate("b-5", "books", popularity=4),
    candidate("s-1", "shoes", popularity=1),
    candidate("b-2", "books", popularity=4),
]


@pytest.mark.parametrize(
    ("consent", "limit", "expected"),
    [
        # Personalized: s-9/s-1 tie on shoe affinity, b-5/b-2 on nothing.
        (True, 3, ["s-9", "s-1", "b-5"]),
        (True, 1, ["s-9"]),
        (True, 10, ["s-9", "s-1", "b-5", "b-2"]),
        # Fallback: b-5/b-2 tie on popularity 4, s-9/s-1 on popularity 1.
        (False, 3, ["b-5", "b-2", "s-9"]),
        (False, 1, ["b-5"]),
        (False, 10, ["b-5", "b-2", "s-9", "s-1"]),
    ],
)
def test_limit_truncates_and_ties_keep_caller_order(
    shop: Caller, consent: bool, limit: int, expected: list[str]
) -> None:
    if consent:
        set_consent(shop, "recommendations")
    collect(shop, "shop_events", views("shoes", 2, datetime.now(UTC)))

    result = personalize(shop, "recommendations", LIMIT_CANDIDATES, limit=limit)

    assert result["outcome"] == ("allow" if consent else "fallback")
    assert ids(result) == expected


# --- fail closed -------------------------------------------------------------------------------

# An audit table that refuses every insert, as a full disk or a lost replica would: a trigger
# that raises, written for the backend the app's database is on.
AUDIT_TABLES = ("audit_entry", "audit_pending")  # chained entries, and those waiting for it
AUDIT_DOWN = {
    "sqlite": [
        f"CREATE TRIGGER audit_down_{table} BEFORE INSERT ON {table} "
        "BEGIN SELECT RAISE(ABORT, 'audit down'); END"
        for table in AUDIT_TABLES
    ],
    "postgresql": [
        "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RAISE EXCEPTION 'audit down'; END $$",
        *(
            f"CREATE TRIGGER audit_down BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_down()"
            for table in AUDIT_TABLES
        ),
    ],
}
AUDIT_UP = {
    "sqlite": [f"DROP TRIGGER audit_down_{table}" for table in AUDIT_TABLES],
    "postgresql": [
        *(f"DROP TRIGGER audit_down ON {table}" for table in AUDIT_TABLES),
        "DROP FUNCTION audit_down()",
    ],
}
LEAKS = (
    "traceback",
    "audit down",
    "insert",
    "audit_entry",
    "audit_pending",
    "trigger",
    "sqlite",
    "integrityerror",
    "postgres",
    "psycopg",
    "plpgsql",
    "raiseexception",
    "internalerror",
)


def _run_statements(app: Flask, statements: dict[str, list[str]]) -> None:
    with raw(app.config) as db:
        for sql in statements["postgresql" if db.postgres else "sqlite"]:
            db.execute(sql)


def break_audit(app: Flask) -> None:
    """Make the app's audit table refuse every insert (SQLite or PostgreSQL trigger)."""
    _run_statements(app, AUDIT_DOWN)


def repair_audit(app: Flask) -> None:
    """Drop what `break_audit` created, so inserts succeed again."""
    _run_statements(app, AUDIT_UP)


@contextmanager
def audit_down(app: Flask) -> Iterator[None]:
    """The audit table refuses every insert inside the block."""
    break_audit(app)
    try:
        yield
    finally:
        repair_audit(app)


def assert_audit_unavailable(response: Any) -> None:
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "audit_unavailable"
    assert body["status"] == 503
    assert set(body) == {"type", "title", "status", "code", "detail", "errors"}
    text = response.get_data(as_text=True).lower()
    assert [leak for leak in LEAKS if leak in text] == []


def test_personalize_fails_closed_when_the_audit_cannot_be_written(
    app: Flask, shop: Caller
) -> None:
    set_consent(shop, "recommendations")
    collect(shop, "shop_events", views("shoes", 2, datetime.now(UTC)))
    entries = count_rows(app, AuditEntry)

    with audit_down(app):
        response = shop.post(
            "/v1/personalize",
            json={
                "subject_id": SUBJECT,
                "purpose": "recommendations",
                "candidates": [candidate("s-1", "shoes")],
            },
        )

    assert_audit_unavailable(response)
    body = response.get_json()
    assert "items" not in body
    assert "personalized" not in body
    assert count_rows(app, AuditEntry) == entries


def test_consent_change_is_not_stored_when_the_audit_cannot_be_written(
    app: Flask, shop: Caller
) -> None:
    break_audit(app)

    response = shop.put(
        f"/v1/subjects/{SUBJECT}/consents/recommendations", json={"granted": True, **NOTICE}
    )

    assert_audit_unavailable(response)
    assert (count_rows(app, ConsentRecord), count_rows(app, Subject)) == (0, 0)
    assert count_rows(app, AuditEntry) == 0
    repair_audit(app)
    state = shop.get(f"/v1/subjects/{SUBJECT}/consents").get_json()
    assert [(p["purpose"], p["state"], p["history"]) for p in state["purposes"]] == [
        ("recommendations", "never_asked", []),
        ("ads_personalization", "never_asked", []),
    ]
    fallback = personalize(shop, "recommendations", [candidate("s-1", "shoes")])
    assert fallback["reasons"] == ["no_consent"]


@pytest.mark.parametrize("kind", ["events", "attributes"])
def test_collection_stores_nothing_when_the_audit_cannot_be_written(
    app: Flask, shop: Caller, kind: str
) -> None:
    body: Json
    with audit_down(app):
        if kind == "events":
            body = {"database": "shop_events", "events": views("shoes", 3, datetime.now(UTC))}
            response = shop.post(f"/v1/subjects/{SUBJECT}/events", json=body)
        else:
            body = {"database": "crm", "attributes": {"favorite_brand": "acme"}}
            response = shop.patch(f"/v1/subjects/{SUBJECT}/attributes", json=body)

    assert_audit_unavailable(response)
    assert (count_rows(app, Event), count_rows(app, Attribute)) == (0, 0)
    assert count_rows(app, Subject) == 0
    assert count_rows(app, AuditEntry) == 0
