"""Collection: events and attributes admitted item by item, stored, audited, PII encrypted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
import yaml
from flask import Flask

from gateway import keyring
from gateway.api.problems import PROBLEM_MIME
from gateway.policy.engine import ReadPlan
from gateway.store.clients import Role, create_client
from gateway.store.db import database
from gateway.store.models import Attribute, AuditEntry, Event, Subject
from gateway.store.profiles import read_profile
from gateway.store.subjects import find_subject
from tests.conftest import Caller, verify_audit
from tests.stores import connect

SUBJECT = "shopper-0193"
CALENDAR = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the date: the demo registrations' review_by dates (mobile_location's is past) hold."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


def event(event_type: str = "view", at: datetime | None = None) -> dict[str, Any]:
    when = at if at is not None else datetime.now(UTC) - timedelta(minutes=1)
    return {"type": event_type, "item_id": "sku-1", "category": "shoes", "at": when.isoformat()}


def post_events(
    caller: Caller, database_id: str, events: list[dict[str, Any]], subject: str = SUBJECT
) -> Any:
    return caller.post(
        f"/v1/subjects/{subject}/events", {"database": database_id, "events": events}
    )


def patch_attributes(
    caller: Caller, database_id: str, attributes: dict[str, Any], subject: str = SUBJECT
) -> Any:
    body = {"database": database_id, "attributes": attributes}
    return caller.patch(f"/v1/subjects/{subject}/attributes", body)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def stored_events(app: Flask, subject: str = SUBJECT) -> list[tuple[str, str, datetime]]:
    with app.app_context(), database.connection_context():
        found = find_subject(keyring().pseudonym(subject))
        if found is None:
            return []
        rows = Event.select().where(Event.subject == found).order_by(Event._meta.primary_key)
        return [(row.database, row.type, row.at) for row in rows]


def stored_attributes(app: Flask, subject: str = SUBJECT) -> dict[tuple[str, str], Any]:
    with app.app_context(), database.connection_context():
        found = find_subject(keyring().pseudonym(subject))
        if found is None:
            return {}
        rows = Attribute.select().where(Attribute.subject == found)
        return {(row.database, row.name): row for row in rows}


def audit_entries(app: Flask) -> list[AuditEntry]:
    with app.app_context(), database.connection_context():
        return list(AuditEntry.select().order_by(AuditEntry.seq))


# -- events ------------------------------------------------------------------------------------


def attributes_read(subject: Subject, plan: ReadPlan) -> dict[str, Any]:
    """The attributes a decision's plan reads (in an app context)."""
    profile = read_profile(subject, plan, keyring(), now=datetime.now(UTC), half_life=timedelta(1))
    return dict(profile.attributes)


EVENT_REFUSALS = {
    "unknown_type": ("shop_events", "teleport", None, "unknown_event_type"),
    "location_into_shop_events": ("shop_events", "store_visit", None, "category_not_registered"),
    "view_into_expired_registration": ("mobile_location", "view", None, "registration_expired"),
    "visit_into_expired_registration": (
        "mobile_location",
        "store_visit",
        None,
        "registration_expired",
    ),
    "browsing_older_than_P90D": ("shop_events", "view", timedelta(days=-91), "stale"),
    "purchase_older_than_P365D": ("crm", "purchase", timedelta(days=-366), "stale"),
    "six_minutes_ahead": ("shop_events", "click", timedelta(minutes=6), "future_timestamp"),
    "a_day_ahead": ("crm", "purchase", timedelta(days=1), "future_timestamp"),
}


@pytest.mark.parametrize(
    ("database_id", "event_type", "offset", "reason"),
    list(EVENT_REFUSALS.values()),
    ids=list(EVENT_REFUSALS),
)
def test_an_event_is_refused_by_index_with_its_reason(
    app: Flask,
    shop: Caller,
    database_id: str,
    event_type: str,
    offset: timedelta | None,
    reason: str,
) -> None:
    bad = event(event_type, None if offset is None else datetime.now(UTC) + offset)
    good = event("purchase") if database_id != "mobile_location" else None
    events = [good, bad] if good else [bad]
    result = ok(post_events(shop, database_id, events))
    bad_index = str(len(events) - 1)
    assert result == {"accepted": [0] if good else [], "refused": {bad_index: reason}}
    stored = stored_events(app)
    assert [(db, kind) for db, kind, _ in stored] == ([(database_id, "purchase")] if good else [])


def test_event_timestamps_are_judged_against_retention_and_clock_skew(
    app: Flask, shop: Caller
) -> None:
    now = datetime.now(UTC)
    events = [
        event("view", now + timedelta(minutes=4)),
        event("view", now - timedelta(days=89)),
        event("view", now + timedelta(minutes=6)),
        event("view", now - timedelta(days=91)),
        event("click", now - timedelta(seconds=1)),
    ]
    result = ok(post_events(shop, "shop_events", events))
    assert result == {"accepted": [0, 1, 4], "refused": {"2": "future_timestamp", "3": "stale"}}
    stored = stored_events(app)
    assert stored == [
        ("shop_events", "view", now + timedelta(minutes=4)),
        ("shop_events", "view", now - timedelta(days=89)),
        ("shop_events", "click", now - timedelta(seconds=1)),
    ]


def test_accepted_events_are_stored_with_their_item(app: Flask, shop: Caller) -> None:
    when = datetime.now(UTC) - timedelta(hours=2)
    body = {"type": "add_to_cart", "item_id": "sku-77", "category": "boots", "at": when.isoformat()}
    ok(post_events(shop, "shop_events", [body]))
    with app.app_context(), database.connection_context():
        (row,) = Event.select()
        pseudonym = keyring().pseudonym(SUBJECT)
        assert row.subject.pseudonym == pseudonym
    assert (row.database, row.type, row.item_id, row.item_category, row.at, row.sealed) == (
        "shop_events",
        "add_to_cart",
        "sku-77",
        "boots",
        when,
        False,
    )


# -- attributes --------------------------------------------------------------------------------

ATTRIBUTE_REFUSALS = {
    "unknown_attribute": ("crm", "shoe_colour", "unknown_attribute"),
    "location_into_crm": ("crm", "home_city", "category_not_registered"),
    "preferences_into_shop_events": ("shop_events", "favorite_brand", "category_not_registered"),
    "contact_into_shop_events": ("shop_events", "email", "category_not_registered"),
    "into_expired_registration": ("mobile_location", "home_city", "registration_expired"),
}


@pytest.mark.parametrize(
    ("database_id", "name", "reason"),
    list(ATTRIBUTE_REFUSALS.values()),
    ids=list(ATTRIBUTE_REFUSALS),
)
def test_an_attribute_is_refused_by_name_with_its_reason(
    app: Flask, shop: Caller, database_id: str, name: str, reason: str
) -> None:
    result = ok(patch_attributes(shop, database_id, {name: "x"}))
    assert result == {"accepted": [], "refused": {name: reason}}
    assert stored_attributes(app) == {}


def test_attributes_are_admitted_one_by_one(app: Flask, mailer: Caller) -> None:
    attributes = {
        "shoe_size": 42,
        "email": "ann@example.com",
        "home_city": "Haifa",
        "shoe_colour": "red",
        "favorite_brand": "Acme",
    }
    result = ok(patch_attributes(mailer, "crm", attributes))
    assert result == {
        "accepted": ["email", "favorite_brand", "shoe_size"],
        "refused": {"home_city": "category_not_registered", "shoe_colour": "unknown_attribute"},
    }
    stored = stored_attributes(app)
    assert sorted(stored) == [("crm", "email"), ("crm", "favorite_brand"), ("crm", "shoe_size")]
    assert json.loads(stored[("crm", "shoe_size")].value) == 42


def test_an_attribute_set_again_replaces_the_old_value(app: Flask, shop: Caller) -> None:
    ok(patch_attributes(shop, "crm", {"favorite_brand": "Acme"}))
    ok(patch_attributes(shop, "crm", {"favorite_brand": "Zenith"}))
    stored = stored_attributes(app)
    assert list(stored) == [("crm", "favorite_brand")]
    assert json.loads(stored[("crm", "favorite_brand")].value) == "Zenith"


# -- no purpose needs it -----------------------------------------------------------------------


def with_unused_category(documents: tuple[Path, Path]) -> None:
    """Add a `biometrics` category that crm registers but no purpose uses."""
    categories_file = documents[0] / "categories.yaml"
    categories = yaml.safe_load(categories_file.read_text())
    categories["categories"]["biometrics"] = {
        "attributes": ["height"],
        "events": ["gait_scan"],
        "retention": "P30D",
    }
    categories_file.write_text(yaml.safe_dump(categories))
    registry_file = documents[1] / "databases.yaml"
    registry = yaml.safe_load(registry_file.read_text())
    registry["databases"]["crm"]["categories"].append("biometrics")
    registry_file.write_text(yaml.safe_dump(registry))


def test_data_no_purpose_needs_is_refused(make_app: Any, documents: tuple[Path, Path]) -> None:
    with_unused_category(documents)
    app = make_app()
    with app.app_context(), database.connection_context():
        _, key = create_client("crm-writer", Role.APP, ["recommendations"], datetime.now(UTC))
    caller = Caller(app.test_client(), key)
    attributes = ok(patch_attributes(caller, "crm", {"height": 181, "shoe_size": 42}))
    assert attributes == {"accepted": ["shoe_size"], "refused": {"height": "no_purpose_needs_it"}}
    events = ok(post_events(caller, "crm", [event("gait_scan"), event("purchase")]))
    assert events == {"accepted": [1], "refused": {"0": "no_purpose_needs_it"}}
    assert list(stored_attributes(app)) == [("crm", "shoe_size")]
    assert [kind for _, kind, _ in stored_events(app)] == ["purchase"]


# -- an app writes only for its own purposes ---------------------------------------------------


def test_an_app_cannot_store_data_only_another_purpose_uses(app: Flask, shop: Caller) -> None:
    # crm holds contact data for email_marketing alone; the shop was granted other purposes
    result = ok(patch_attributes(shop, "crm", {"email": "ann@example.com", "shoe_size": 42}))

    assert result == {"accepted": ["shoe_size"], "refused": {"email": "purpose_not_granted"}}
    assert list(stored_attributes(app)) == [("crm", "shoe_size")]


def test_an_app_cannot_overwrite_what_another_apps_purpose_relies_on(
    app: Flask, shop: Caller, mailer: Caller
) -> None:
    assert ok(patch_attributes(mailer, "crm", {"email": "ann@example.com"}))["accepted"] == [
        "email"
    ]

    result = ok(patch_attributes(shop, "crm", {"email": "attacker@example.com"}))

    assert result == {"accepted": [], "refused": {"email": "purpose_not_granted"}}
    with app.app_context(), database.connection_context():
        subject = find_subject(keyring().pseudonym(SUBJECT))
        plan = ReadPlan(attributes=(("crm", "email"),))
        assert attributes_read(subject, plan) == {"email": "ann@example.com"}
    entries = audit_entries(app)
    assert json.loads(entries[-1].fields)["refused"] == {"email": "purpose_not_granted"}


def test_events_are_admitted_per_purpose_of_the_writing_app(app: Flask, new_caller: Any) -> None:
    # shop_events serves recommendations (purchases, browsing) and ads (browsing)
    ads_only = new_caller("app", ("ads_personalization",))

    result = ok(post_events(ads_only, "shop_events", [event("purchase"), event("view")]))

    assert result == {"accepted": [1], "refused": {"0": "purpose_not_granted"}}
    assert [kind for _, kind, _ in stored_events(app)] == ["view"]


@pytest.mark.parametrize("who", ["mailer", "admin"])
def test_the_app_whose_purpose_uses_it_and_an_admin_may_store_it(
    request: pytest.FixtureRequest, app: Flask, who: str
) -> None:
    caller: Caller = request.getfixturevalue(who)

    result = ok(patch_attributes(caller, "crm", {"email": "ann@example.com"}))

    assert result == {"accepted": ["email"], "refused": {}}
    assert list(stored_attributes(app)) == [("crm", "email")]


# -- unknown database --------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["events", "attributes"])
@pytest.mark.parametrize("who", ["shop", "admin"])
def test_an_unknown_database_is_422_naming_it(
    request: pytest.FixtureRequest, app: Flask, resource: str, who: str
) -> None:
    caller: Caller = request.getfixturevalue(who)
    if resource == "events":
        response = post_events(caller, "data_lake", [event()])
    else:
        response = patch_attributes(caller, "data_lake", {"favorite_brand": "Acme"})
    assert response.status_code == 422
    assert response.headers["Content-Type"] == PROBLEM_MIME
    problem = response.get_json()
    assert list(problem["errors"]) == ["database"]
    assert "data_lake" in problem["errors"]["database"][0]
    assert stored_events(app) == []
    assert stored_attributes(app) == {}
    assert audit_entries(app) == []


# -- audit -------------------------------------------------------------------------------------


def test_every_collection_call_is_audited(app: Flask, shop: Caller, auditor: Caller) -> None:
    calls = [
        ("events.collect", post_events(shop, "shop_events", [event("view"), event("teleport")])),
        ("events.collect", post_events(shop, "mobile_location", [event("view")])),
        ("attributes.collect", patch_attributes(shop, "crm", {"favorite_brand": "Acme"})),
        ("attributes.collect", patch_attributes(shop, "crm", {"home_city": "Haifa"})),
    ]
    databases = ["shop_events", "mobile_location", "crm", "crm"]
    results = [ok(response) for _, response in calls]
    policy_hash = auditor.get("/v1/policies").get_json()["policy_hash"]
    with app.app_context():
        pseudonym = keyring().pseudonym(SUBJECT)
    entries = audit_entries(app)
    assert [e.action for e in entries] == [action for action, _ in calls]
    assert [e.outcome for e in entries] == ["accepted", "refused", "accepted", "refused"]
    for entry, result, database_id in zip(entries, results, databases, strict=True):
        assert entry.subject == pseudonym
        assert entry.policy_hash == policy_hash
        assert json.loads(entry.fields) == {"database": database_id, **result}
        assert SUBJECT not in json.dumps(entry.__data__, default=str)
    assert verify_audit(app).ok


# -- PII at rest -------------------------------------------------------------------------------

PII_SUBJECT = "ann.subject-5d1e8c"
EMAIL = "ann.private-7731@example.org"
PHONE = "+972-50-555-0199"
BRAND = "Brandwise-Q7x"


def database_bytes(db_path: Path) -> dict[str, bytes]:
    files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
    return {path.name: path.read_bytes() for path in files if path.exists()}


def assert_only_brand_in_clear(files: dict[str, bytes]) -> None:
    for name, data in files.items():
        for secret in (EMAIL, PHONE, PII_SUBJECT):
            assert secret.encode() not in data, f"{secret!r} in plaintext in {name}"
    assert any(BRAND.encode() in data for data in files.values())


def collect_pii(shop: Caller, mailer: Caller) -> None:
    """Attributes (two of them PII), an event and a consent for PII_SUBJECT, through the API."""
    attributes = {"email": EMAIL, "phone": PHONE, "favorite_brand": BRAND}
    result = ok(patch_attributes(mailer, "crm", attributes, subject=PII_SUBJECT))
    assert result["accepted"] == ["email", "favorite_brand", "phone"]
    ok(post_events(shop, "shop_events", [event("view")], subject=PII_SUBJECT))
    consent = {"granted": True, "source": "web", "notice_version": "1"}
    path = f"/v1/subjects/{PII_SUBJECT}/consents/recommendations"
    assert shop.put(path, consent).status_code == 200


def stored_text(url: str) -> dict[str, bytes]:
    """Every stored value of every table of the database at `url`, one per line, by table."""
    found: dict[str, bytes] = {}
    with connect(url) as db:
        for table in db.tables():
            rows = db.execute(f"SELECT * FROM {table}").fetchall()
            values = [value for row in rows for value in row]
            found[table] = b"\n".join(
                bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in values
            )
    return found


def test_pii_and_subject_ids_never_reach_any_stored_row(
    app: Flask, shop: Caller, mailer: Caller
) -> None:
    collect_pii(shop, mailer)

    stored = {
        f"{store}:{table}": text
        for store in ("DATABASE_URL", "KEYSTORE_URL")
        for table, text in stored_text(app.config[store]).items()
    }

    # The scan reads the rows the requests wrote: the plain preference is there, by pseudonym.
    assert BRAND.encode() in stored["DATABASE_URL:attribute"]
    with app.app_context():
        pseudonym = keyring().pseudonym(PII_SUBJECT).encode()
    for table in ("subject", "audit_entry"):
        assert pseudonym in stored[f"DATABASE_URL:{table}"]
    assert pseudonym in stored["KEYSTORE_URL:subject_key"]
    assert b"sku-1" in stored["DATABASE_URL:event"]
    assert b"recommendations" in stored["DATABASE_URL:consent_record"]
    assert_only_brand_in_clear(stored)


@pytest.mark.sqlite
def test_pii_and_subject_ids_never_reach_the_database_files(
    shop: Caller, mailer: Caller, db_path: Path
) -> None:
    # A second connection held open keeps the WAL file alive after each request's connection
    # closes, so the bytes can be read both before and after a checkpoint.
    with connect(f"sqlite:///{db_path}") as watcher:
        watcher.execute("SELECT count(*) FROM subject").fetchone()
        collect_pii(shop, mailer)

        before = database_bytes(db_path)
        assert BRAND.encode() in before[f"{db_path.name}-wal"], "the writes sit in the WAL"
        assert_only_brand_in_clear(before)
        busy, _, _ = watcher.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        after = database_bytes(db_path)
    assert after[f"{db_path.name}-wal"] == b""
    assert_only_brand_in_clear(after)
    assert BRAND.encode() in after[db_path.name]
    assert_only_brand_in_clear(database_bytes(db_path))


def test_pii_values_round_trip_only_through_the_store(app: Flask, mailer: Caller) -> None:
    attributes = {"email": EMAIL, "phone": PHONE, "favorite_brand": BRAND, "shoe_size": 42}
    ok(patch_attributes(mailer, "crm", attributes))
    stored = stored_attributes(app)
    for name in ("email", "phone"):
        row = stored[("crm", name)]
        assert row.sealed is True
        assert row.value.startswith("v1:dk:")
        assert attributes[name] not in row.value
        assert row.value != json.dumps(attributes[name])
    for name in ("favorite_brand", "shoe_size"):
        row = stored[("crm", name)]
        assert row.sealed is False
        assert json.loads(row.value) == attributes[name]
    everything = ReadPlan(attributes=tuple(("crm", name) for name in sorted(attributes)))
    only_brand = ReadPlan(attributes=(("crm", "favorite_brand"),))
    with app.app_context(), database.connection_context():
        subject = find_subject(keyring().pseudonym(SUBJECT))
        assert subject is not None
        assert attributes_read(subject, everything) == attributes
        assert attributes_read(subject, only_brand) == {"favorite_brand": BRAND}
        assert Subject.select().count() == 1
