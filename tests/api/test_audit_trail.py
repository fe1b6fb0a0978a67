"""Every decision lands in the hash-chained audit log, under a pseudonym, and tampering shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from flask import Flask

import gateway
from gateway.audit.verification import Verification
from gateway.store.clients import authenticate
from gateway.store.db import database
from gateway.store.models import AuditEntry
from tests.api.test_personalize import (
    DEMO_NOW,
    candidate,
    collect,
    personalize,
    set_attributes,
    set_consent,
    views,
)
from tests.conftest import Caller, verify_audit
from tests.stores import raw

RAW_ID = "raw-subject-5c2e91"
CANDIDATES = [candidate("b-1", "books", popularity=3), candidate("s-1", "shoes")]


@pytest.fixture(autouse=True)
def demo_clock() -> Iterator[None]:
    """Pin the calendar (the clock still ticks) so registration review dates are known."""
    with time_machine.travel(DEMO_NOW, tick=True):
        yield


def pseudonym(app: Flask, subject_id: str) -> str:
    with app.app_context():
        return gateway.keyring().pseudonym(subject_id)


def audit_entries(app: Flask) -> list[AuditEntry]:
    with app.app_context(), database.connection_context():
        return list(AuditEntry.select().order_by(AuditEntry.seq))


def verification(app: Flask) -> Verification:
    return verify_audit(app)


def client_name(app: Flask, caller: Caller) -> str:
    with app.app_context(), database.connection_context():
        client = authenticate(caller.key)
        assert client is not None
        return str(client.name)


def table_rows(app: Flask) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the database and of the keystore, read straight from them."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for store in ("DATABASE_URL", "KEYSTORE_URL"):
        with raw(app.config, store) as connection:
            for table in connection.tables():
                rows = connection.execute(f'SELECT * FROM "{table}"').fetchall()
                found[table] = [tuple(row) for row in rows]
    return found


def busy_history(shop: Caller, mailer: Caller, subject: str) -> int:
    """A realistic mix of writes and decisions for one subject; returns the decisions made."""
    now = DEMO_NOW
    personalize(shop, "recommendations", CANDIDATES, subject=subject)
    set_consent(shop, "recommendations", subject=subject)
    collect(shop, "shop_events", views("shoes", 3, now), subject=subject)
    set_attributes(mailer, "crm", {"favorite_brand": "acme", "email": "x@example.com"}, subject)
    personalize(shop, "recommendations", CANDIDATES, subject=subject, explain=True)
    personalize(mailer, "email_marketing", CANDIDATES, subject=subject)
    set_consent(mailer, "email_marketing", granted=False, subject=subject)
    personalize(mailer, "email_marketing", CANDIDATES, subject=subject)
    personalize(shop, "ads_personalization", CANDIDATES, subject=subject, headers={"Sec-GPC": "1"})
    set_consent(shop, "recommendations", granted=False, subject=subject)
    personalize(shop, "recommendations", CANDIDATES, subject=subject, limit=1)
    return 6


@pytest.mark.parametrize(
    ("caller_name", "purpose", "consent", "headers", "outcome", "reasons"),
    [
        ("shop", "recommendations", True, {}, "allow", ["consent_granted"]),
        ("shop", "recommendations", None, {}, "fallback", ["no_consent"]),
        ("shop", "recommendations", False, {}, "fallback", ["consent_withdrawn"]),
        ("shop", "ads_personalization", True, {"Sec-GPC": "1"}, "fallback", ["gpc_objection"]),
        ("mailer", "email_marketing", None, {}, "allow", ["legitimate_interest"]),
        ("mailer", "email_marketing", False, {}, "deny", ["objection"]),
    ],
)
def test_each_decision_appends_one_matching_entry(
    request: pytest.FixtureRequest,
    app: Flask,
    caller_name: str,
    purpose: str,
    consent: bool | None,
    headers: dict[str, str],
    outcome: str,
    reasons: list[str],
) -> None:
    caller: Caller = request.getfixturevalue(caller_name)
    if consent is not None:
        set_consent(caller, purpose, granted=consent, subject=RAW_ID)
    before = audit_entries(app)

    result = personalize(caller, purpose, CANDIDATES, headers=headers, subject=RAW_ID)

    added = audit_entries(app)[len(before) :]
    assert len(added) == 1
    entry = added[0]
    assert (result["outcome"], result["reasons"]) == (outcome, reasons)
    assert entry.action == "decision"
    assert entry.outcome == outcome
    assert json.loads(entry.reasons) == reasons
    assert entry.purpose == purpose
    assert entry.decision_id == result["decision_id"]
    with app.app_context():
        assert entry.policy_hash == result["policy_hash"] == gateway.policies().hash
    assert entry.subject == pseudonym(app, RAW_ID)
    assert entry.subject != RAW_ID
    assert entry.actor == client_name(app, caller)
    assert json.loads(entry.fields)["used"] == result["fields_used"]


def test_decision_ids_are_unique_and_recorded_in_order(app: Flask, shop: Caller) -> None:
    set_consent(shop, "recommendations", subject=RAW_ID)
    results = [personalize(shop, "recommendations", CANDIDATES, subject=RAW_ID) for _ in range(5)]

    decisions = [e for e in audit_entries(app) if e.action == "decision"]

    assert [e.decision_id for e in decisions] == [r["decision_id"] for r in results]
    assert len({r["decision_id"] for r in results}) == 5


def test_dropped_fields_are_audited(app: Flask, shop: Caller, mailer: Caller) -> None:
    set_consent(shop, "recommendations", subject=RAW_ID)
    set_attributes(mailer, "crm", {"favorite_brand": "acme", "email": "x@example.com"}, RAW_ID)

    result = personalize(shop, "recommendations", CANDIDATES, subject=RAW_ID)

    fields = json.loads(audit_entries(app)[-1].fields)
    assert fields == {"used": ["favorite_brand"], "dropped": ["email@crm:not_needed_for_purpose"]}
    assert result["fields_dropped"][0]["field"] == "email"


def test_raw_subject_id_never_reaches_the_audit_log(
    app: Flask, shop: Caller, mailer: Caller
) -> None:
    busy_history(shop, mailer, RAW_ID)

    rows = table_rows(app)

    audit = rows["audit_entry"]
    assert len(audit) == len(audit_entries(app)) == 11
    assert [cell for row in audit for cell in row if RAW_ID in str(cell)] == []
    subjects = {entry.subject for entry in audit_entries(app)}
    assert subjects == {pseudonym(app, RAW_ID)}
    # Nor does it reach any other table: subjects are stored as pseudonyms only.
    leaks = [table for table, found in rows.items() for row in found if RAW_ID in repr(row)]
    assert leaks == []


def test_chain_verifies_after_many_requests(app: Flask, shop: Caller, mailer: Caller) -> None:
    decisions = sum(busy_history(shop, mailer, f"subject-{n}") for n in range(4))

    result = verification(app)

    entries = audit_entries(app)
    assert result.ok and result.entries == len(entries) == result.last_seq
    assert len(entries) == 44
    assert sum(e.action == "decision" for e in entries) == decisions
    assert [e.seq for e in entries] == list(range(1, 45))


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_editing_one_outcome_is_caught_at_its_seq(
    app: Flask, shop: Caller, mailer: Caller, which: str
) -> None:
    busy_history(shop, mailer, RAW_ID)
    decisions = [e for e in audit_entries(app) if e.action == "decision"]
    target = {"first": decisions[0], "middle": decisions[3], "last": decisions[-1]}[which]
    assert target.outcome != "allow"
    assert verification(app).ok is True

    with raw(app.config) as connection:
        connection.execute("UPDATE audit_entry SET outcome = 'allow' WHERE seq = ?", (target.seq,))

    result = verification(app)
    assert result.ok is False
    assert result.first_bad_seq == target.seq
    assert result.problem == "content does not match its hash: the entry was edited"
