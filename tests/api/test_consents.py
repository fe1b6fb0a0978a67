"""Consent: signed receipts, state and history, expiry, legitimate interest, audit."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask

from gateway import keyring
from gateway.api.problems import PROBLEM_MIME
from gateway.crypto import canonical_json, verify_signature
from gateway.store.db import database
from gateway.store.models import AuditEntry, ConsentRecord, Subject
from tests.conftest import Caller

SUBJECT = "customer-4711@shop"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CALENDAR = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
RECEIPT_KEYS = {
    "receipt_id",
    "subject",
    "purpose",
    "granted",
    "source",
    "notice_version",
    "recorded_at",
    "expires_at",
    "policy_hash",
    "key_id",
}


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the date: the demo registrations' review_by dates (mobile_location's is past) hold."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


def path(purpose: str, subject: str = SUBJECT) -> str:
    return f"/v1/subjects/{subject}/consents/{purpose}"


def change(granted: bool = True, **extra: Any) -> dict[str, Any]:
    return {"granted": granted, "source": "web-banner", "notice_version": "2024-05", **extra}


def put(caller: Caller, purpose: str, granted: bool = True, **extra: Any) -> dict[str, Any]:
    response = caller.put(path(purpose), change(granted, **extra))
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def state(caller: Caller, purpose: str) -> dict[str, Any]:
    response = caller.get(path(purpose))
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def listed(caller: Caller, purpose: str) -> dict[str, Any]:
    response = caller.get(f"/v1/subjects/{SUBJECT}/consents")
    assert response.status_code == 200
    assert response.get_json()["subject_id"] == SUBJECT
    found: dict[str, Any] = next(
        p for p in response.get_json()["purposes"] if p["purpose"] == purpose
    )
    return found


def signing_key(caller: Caller) -> dict[str, Any]:
    response = caller.get("/v1/keys/signing")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def pem_verifies(pem: str, receipt: dict[str, Any]) -> bool:
    """Verify with cryptography directly, sharing no code with gateway.crypto."""
    public = load_pem_public_key(pem.encode("ascii"))
    assert isinstance(public, Ed25519PublicKey)
    signature = base64.urlsafe_b64decode(receipt["signature"])
    message = json.dumps(
        receipt["payload"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def verifies(key: dict[str, Any], receipt: dict[str, Any]) -> bool:
    by_gateway = verify_signature(
        key["public_key"], receipt["signature"], canonical_json(receipt["payload"])
    )
    assert by_gateway == pem_verifies(key["public_key_pem"], receipt)
    return by_gateway


def pseudonym_of(app: Flask, subject_id: str) -> str:
    with app.app_context():
        return keyring().pseudonym(subject_id)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- receipts ----------------------------------------------------------------------------------


def test_a_grant_returns_the_record_with_a_verifiable_receipt(shop: Caller) -> None:
    record = put(shop, "recommendations")
    assert record["purpose"] == "recommendations"
    assert record["granted"] is True
    assert (record["source"], record["notice_version"]) == ("web-banner", "2024-05")
    receipt = record["receipt"]
    assert receipt["algorithm"] == "Ed25519"
    assert set(receipt["payload"]) == RECEIPT_KEYS
    assert receipt["payload"]["purpose"] == "recommendations"
    assert receipt["payload"]["granted"] is True
    assert at(receipt["payload"]["recorded_at"]) == at(record["recorded_at"])
    key = signing_key(shop)
    assert receipt["payload"]["key_id"] == key["key_id"]
    assert verify_signature(
        key["public_key"], receipt["signature"], canonical_json(receipt["payload"])
    )
    assert pem_verifies(key["public_key_pem"], receipt)


TAMPERINGS = {
    "granted": False,
    "purpose": "ads_personalization",
    "subject": "v1:someone-else",
    "source": "forged",
    "notice_version": "1999-01",
    "recorded_at": "2020-01-01T00:00:00+00:00",
    "expires_at": "2099-01-01T00:00:00+00:00",
    "policy_hash": "sha256:" + "0" * 64,
    "receipt_id": "00000000-0000-0000-0000-000000000000",
}


@pytest.mark.parametrize(("field", "value"), list(TAMPERINGS.items()), ids=list(TAMPERINGS))
def test_a_tampered_receipt_payload_does_not_verify(shop: Caller, field: str, value: Any) -> None:
    receipt = put(shop, "recommendations")["receipt"]
    key = signing_key(shop)
    assert verifies(key, receipt)
    tampered = {**receipt, "payload": {**receipt["payload"], field: value}}
    assert not verifies(key, tampered)


def test_a_tampered_signature_does_not_verify(shop: Caller) -> None:
    receipt = put(shop, "recommendations")["receipt"]
    raw = bytearray(base64.urlsafe_b64decode(receipt["signature"]))
    raw[0] ^= 0x01
    forged = {**receipt, "signature": base64.urlsafe_b64encode(bytes(raw)).decode()}
    assert not verifies(signing_key(shop), forged)


def test_the_receipt_names_the_subject_by_pseudonym_only(app: Flask, shop: Caller) -> None:
    payload = put(shop, "recommendations")["receipt"]["payload"]
    assert payload["subject"] == pseudonym_of(app, SUBJECT)
    assert SUBJECT not in canonical_json(payload).decode()
    assert payload["subject"] != pseudonym_of(app, SUBJECT + "x")


@pytest.mark.parametrize("offset", ["Z", "+00:00", "+02:00", "-05:30"])
def test_stored_receipts_verify_whatever_offset_expires_at_was_given_in(
    shop: Caller, offset: str
) -> None:
    given = "2030-06-01T08:30:00" + offset
    record = put(shop, "recommendations", expires_at=given)
    key = signing_key(shop)
    assert verifies(key, record["receipt"])
    history = state(shop, "recommendations")["history"]
    assert (
        history[0]["receipt"]["payload"]["receipt_id"] == record["receipt"]["payload"]["receipt_id"]
    )
    assert at(history[0]["receipt"]["payload"]["expires_at"]) == at(given)
    assert verifies(key, history[0]["receipt"])


# -- state and history -------------------------------------------------------------------------


def test_state_and_history_follow_grant_withdrawal_and_regrant(shop: Caller) -> None:
    key = signing_key(shop)
    with time_machine.travel(T0, tick=False):
        put(shop, "recommendations", True)
        granted = state(shop, "recommendations")
    assert (granted["state"], granted["lawful"], granted["reason"]) == (
        "granted",
        True,
        "consent_granted",
    )
    assert granted["legal_basis"] == "consent"
    assert at(granted["expires_at"]) == datetime(2028, 1, 1, 12, tzinfo=UTC)  # T0 + P13M

    with time_machine.travel(T0 + timedelta(days=1), tick=False):
        put(shop, "recommendations", False)
        withdrawn = state(shop, "recommendations")
    assert (withdrawn["state"], withdrawn["lawful"], withdrawn["reason"]) == (
        "withdrawn",
        False,
        "consent_withdrawn",
    )
    assert withdrawn["expires_at"] is None

    with time_machine.travel(T0 + timedelta(days=2), tick=False):
        put(shop, "recommendations", True, source="app-settings")
        regranted = state(shop, "recommendations")
        in_list = listed(shop, "recommendations")
    assert (regranted["state"], regranted["lawful"]) == ("granted", True)
    assert regranted == in_list
    history = regranted["history"]
    assert [h["granted"] for h in history] == [True, False, True]
    assert [at(h["recorded_at"]) for h in history] == [
        T0 + timedelta(days=2),
        T0 + timedelta(days=1),
        T0,
    ]
    assert history[0]["source"] == "app-settings"
    assert history[1]["expires_at"] is None
    assert all(verifies(key, h["receipt"]) for h in history)
    assert len({h["receipt"]["payload"]["receipt_id"] for h in history}) == 3


@pytest.mark.parametrize("sequence", [[True, False], [False, True], [True, False, True, False]])
def test_the_latest_change_wins_even_within_the_same_instant(
    shop: Caller, sequence: list[bool]
) -> None:
    with time_machine.travel(T0, tick=False):
        for granted in sequence:
            put(shop, "recommendations", granted)
        current = state(shop, "recommendations")
    assert current["state"] == ("granted" if sequence[-1] else "withdrawn")
    assert current["lawful"] is sequence[-1]
    assert [h["granted"] for h in current["history"]] == sequence[::-1]


def test_a_subject_never_asked_has_no_consent(shop: Caller) -> None:
    current = state(shop, "recommendations")
    assert current == {
        "purpose": "recommendations",
        "legal_basis": "consent",
        "state": "never_asked",
        "lawful": False,
        "reason": "no_consent",
        "expires_at": None,
        "history": [],
    }


# -- validation --------------------------------------------------------------------------------

BAD_EXPIRIES = {
    "past": "2020-01-01T00:00:00Z",
    "just_past": "2026-12-01T11:59:59Z",
    "now": "2026-12-01T12:00:00Z",
    "naive": "2030-01-01T00:00:00",
    "naive_date_only": "2030-01-01",
    "not_a_date": "next tuesday",
}


@pytest.mark.parametrize("expires_at", list(BAD_EXPIRIES.values()), ids=list(BAD_EXPIRIES))
def test_an_unusable_expires_at_is_refused(app: Flask, shop: Caller, expires_at: str) -> None:
    with time_machine.travel(T0, tick=False):
        response = shop.put(path("recommendations"), change(expires_at=expires_at))
    assert response.status_code == 422
    assert response.headers["Content-Type"] == PROBLEM_MIME
    assert list(response.get_json()["errors"]) == ["expires_at"]
    assert state(shop, "recommendations")["history"] == []
    with app.app_context(), database.connection_context():
        assert ConsentRecord.select().count() == 0
        assert AuditEntry.select().count() == 0


# -- expiry ------------------------------------------------------------------------------------


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


# T0 is 2026-12-01T12:00Z: + P6M (ads_personalization) is 2027-06-01T12:00Z,
# + P13M (recommendations) is 2028-01-01T12:00Z; email_marketing has no consent_max_age.
EXPIRIES = {
    "ads-max-age": ("ads_personalization", None, utc(2027, 6, 1, 12)),
    "ads-max-age-earlier": ("ads_personalization", "2027-12-01T12:00:00Z", utc(2027, 6, 1, 12)),
    "ads-expires-at-earlier": (
        "ads_personalization",
        "2026-12-11T12:00:00Z",
        utc(2026, 12, 11, 12),
    ),
    "ads-expires-at-offset": ("ads_personalization", "2027-01-01T02:00:00+02:00", utc(2027, 1, 1)),
    "rec-max-age": ("recommendations", None, utc(2028, 1, 1, 12)),
    "rec-max-age-earlier": ("recommendations", "2030-01-01T00:00:00Z", utc(2028, 1, 1, 12)),
    "rec-expires-at-earlier": ("recommendations", "2027-12-01T12:00:00Z", utc(2027, 12, 1, 12)),
    "li-never": ("email_marketing", None, None),
    "li-expires-at": ("email_marketing", "2027-03-01T00:00:00Z", utc(2027, 3, 1)),
}


@pytest.mark.parametrize(
    ("purpose", "expires_at", "effective"), list(EXPIRIES.values()), ids=list(EXPIRIES)
)
def test_effective_expiry_is_the_earlier_of_expires_at_and_max_age(
    admin: Caller, purpose: str, expires_at: str | None, effective: datetime | None
) -> None:
    extra: dict[str, Any] = {} if expires_at is None else {"expires_at": expires_at}
    with time_machine.travel(T0, tick=False):
        record = put(admin, purpose, **extra)
        current = state(admin, purpose)
    shown = [record["expires_at"], current["expires_at"], current["history"][0]["expires_at"]]
    assert [None if s is None else at(s) for s in shown] == [effective] * 3
    assert current["state"] == "granted"
    # The receipt keeps what the subject agreed to, not the effective limit.
    signed = record["receipt"]["payload"]["expires_at"]
    if expires_at is None:
        assert signed is None
    else:
        assert at(signed) == at(expires_at)


@pytest.mark.parametrize(
    ("purpose", "later", "expected"),
    [
        pytest.param("ads_personalization", timedelta(days=181), "granted", id="ads-6m-less-1d"),
        pytest.param("ads_personalization", timedelta(days=182), "expired", id="ads-6m"),
        pytest.param("ads_personalization", timedelta(days=400), "expired", id="ads-13m"),
        pytest.param("recommendations", timedelta(days=200), "granted", id="rec-7m"),
        pytest.param("recommendations", timedelta(days=395), "granted", id="rec-13m-less-1d"),
        pytest.param("recommendations", timedelta(days=397), "expired", id="rec-13m"),
    ],
)
def test_a_grant_expires_after_the_purpose_consent_max_age(
    shop: Caller, purpose: str, later: timedelta, expected: str
) -> None:
    # T0 is 2026-12-01: +P6M is 2027-06-01 (182 days), +P13M is 2028-01-01 (396 days).
    with time_machine.travel(T0, tick=False):
        put(shop, purpose)
    with time_machine.travel(T0 + later, tick=False):
        current = state(shop, purpose)
        in_list = listed(shop, purpose)
    assert current == in_list
    assert current["state"] == expected
    assert current["lawful"] is (expected == "granted")
    assert current["reason"] == ("consent_granted" if expected == "granted" else "consent_expired")


def test_a_grant_expires_at_its_own_expires_at(shop: Caller) -> None:
    with time_machine.travel(T0, tick=False):
        put(shop, "recommendations", expires_at="2026-12-11T12:00:00Z")
    with time_machine.travel(datetime(2026, 12, 11, 11, 59, tzinfo=UTC), tick=False):
        assert state(shop, "recommendations")["state"] == "granted"
    with time_machine.travel(datetime(2026, 12, 11, 12, 0, tzinfo=UTC), tick=False):
        current = state(shop, "recommendations")
    assert (current["state"], current["lawful"], current["reason"]) == (
        "expired",
        False,
        "consent_expired",
    )


# -- legitimate interest -----------------------------------------------------------------------


def test_legitimate_interest_is_lawful_until_the_subject_objects(mailer: Caller) -> None:
    before = state(mailer, "email_marketing")
    assert (before["legal_basis"], before["state"], before["lawful"], before["reason"]) == (
        "legitimate_interest",
        "never_asked",
        True,
        "legitimate_interest",
    )
    record = put(mailer, "email_marketing", False)
    assert (record["granted"], record["expires_at"]) == (False, None)
    after = state(mailer, "email_marketing")
    assert (after["state"], after["lawful"], after["reason"]) == ("withdrawn", False, "objection")
    assert after == listed(mailer, "email_marketing")
    put(mailer, "email_marketing", True)
    again = state(mailer, "email_marketing")
    assert (again["state"], again["lawful"], again["reason"]) == (
        "granted",
        True,
        "legitimate_interest",
    )


# -- audit -------------------------------------------------------------------------------------


def test_consent_changes_are_audited_under_the_pseudonym(
    app: Flask, shop: Caller, auditor: Caller
) -> None:
    grant = put(shop, "ads_personalization", True)
    withdrawal = put(shop, "ads_personalization", False)
    policy_hash = auditor.get("/v1/policies").get_json()["policy_hash"]
    pseudonym = pseudonym_of(app, SUBJECT)
    with app.app_context(), database.connection_context():
        entries = list(AuditEntry.select().order_by(AuditEntry.seq))
        subjects = [s.pseudonym for s in Subject.select()]
    assert subjects == [pseudonym]
    assert [e.action for e in entries] == ["consent.grant", "consent.withdraw"]
    for entry, record in zip(entries, (grant, withdrawal), strict=True):
        assert entry.subject == pseudonym
        assert entry.purpose == "ads_personalization"
        assert entry.policy_hash == policy_hash == record["receipt"]["payload"]["policy_hash"]
        assert entry.actor == record["client"]
        assert json.loads(entry.fields)["receipt_id"] == record["receipt"]["payload"]["receipt_id"]
        assert SUBJECT not in json.dumps(entry.__data__, default=str)


def test_a_refused_consent_change_is_neither_stored_nor_audited(app: Flask, mailer: Caller) -> None:
    assert mailer.put(path("recommendations"), change()).status_code == 403
    assert mailer.put(path("email_marketing"), {**change(), "extra": 1}).status_code == 422
    with app.app_context(), database.connection_context():
        assert ConsentRecord.select().count() == 0
        assert AuditEntry.select().count() == 0


# -- unknown purpose ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_an_unknown_purpose_in_the_path_is_404(app: Flask, admin: Caller, method: str) -> None:
    body = change() if method == "PUT" else None
    response = admin.request(method, path("telepathy"), body)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == PROBLEM_MIME
    problem = response.get_json()
    assert problem["code"] == "unknown_purpose"
    assert list(problem["errors"]) == ["purpose"]
    assert "telepathy" in problem["errors"]["purpose"][0]
    with app.app_context(), database.connection_context():
        assert Subject.select().count() == 0
        assert AuditEntry.select().count() == 0
