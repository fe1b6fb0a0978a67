"""IAB TCF strings as consent signals: PUT /v1/subjects/{id}/consents and personalize's `tcf`."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.crypto import canonical_json, verify_signature
from gateway.store.clients import Role, create_client
from gateway.store.db import database
from gateway.store.models import AuditEntry, ConsentRecord
from gateway.tcf import TCStringErrorCode, tc_string_digest
from tests.api.test_personalize import assert_audit_unavailable, audit_down
from tests.conftest import Caller, gateway_environment, running_server, verify_audit
from tests.policy.test_documents import replace_in
from tests.tcf_strings import ALPHABET, iab_string, tc_string

SUBJECT = "customer-4711@shop"
PATH = f"/v1/subjects/{SUBJECT}/consents"
# a day the demo registrations are all in force (mobile_location's review date is past later)
CALENDAR = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
CONTENT_AND_ADS = {"purpose_consents": [1, 3, 4, 5, 6], "vendor_consents": [755]}


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    with time_machine.travel(CALENDAR, tick=True):
        yield


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def signal(**fields: Any) -> str:
    """A string updated an hour ago unless told otherwise."""
    return tc_string(**{"last_updated": ago(hours=1), **fields})


def apply(caller: Caller, text: str, **extra: Any) -> dict[str, Any]:
    response = caller.put(PATH, {"tcf": text, **extra})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def results(body: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {p["purpose"]: (p["result"], p["reason"]) for p in body["purposes"]}


def states(caller: Caller) -> dict[str, dict[str, Any]]:
    response = caller.get(PATH)
    assert response.status_code == 200
    return {p["purpose"]: p for p in response.get_json()["purposes"]}


def stored(app: Flask) -> tuple[int, int]:
    """(consent records, audit entries) in the database."""
    with app.app_context(), database.connection_context():
        return ConsentRecord.select().count(), AuditEntry.select().count()


def caller_of(app: Flask, role: str = "admin", purposes: tuple[str, ...] = ()) -> Caller:
    with app.app_context(), database.connection_context():
        _, key = create_client(f"signals-{role}", Role(role), list(purposes), datetime.now(UTC))
    http: FlaskClient = app.test_client()
    return Caller(http, key)


# -- the IAB's own string ----------------------------------------------------------------------


def test_a_string_from_the_iab_encoder_grants_content_and_withdraws_ads(
    app: Flask, shop: Caller
) -> None:
    """Vendor 755 has consent for purposes 1 and 3-6, but the publisher disallows it purpose 3
    (type 0): recommendations (5, 6) are granted, ads_personalization (3, 4) withdrawn."""
    text = iab_string("publisher restrictions")
    body = apply(shop, text, source="web_cmp")
    assert results(body) == {
        "recommendations": ("granted", None),
        "ads_personalization": ("withdrawn", None),
    }
    assert body["tcf"] == {
        "sha256": tc_string_digest(text),
        "cmp_id": 31,
        "vendor_list_version": 150,
        "policy_version": 5,
        "last_updated": "2026-11-25T10:30:00.100000+00:00",
    }
    found = states(shop)
    assert (found["recommendations"]["state"], found["recommendations"]["lawful"]) == (
        "granted",
        True,
    )
    assert found["ads_personalization"]["reason"] == "consent_withdrawn"
    [record] = found["recommendations"]["history"]
    assert (record["source"], record["notice_version"]) == ("tcf", "tcf-policy-5/gvl-150")
    # recommendations lapse 13 months after the subject chose, not after the gateway heard
    assert record["expires_at"] == "2027-12-25T10:30:00.100000+00:00"
    assert record["receipt"]["payload"]["receipt_id"] == body["purposes"][0]["receipt_id"]


# -- receipts and audit ------------------------------------------------------------------------


def test_receipts_carry_the_strings_facts_and_verify(app: Flask, shop: Caller) -> None:
    text = signal(**CONTENT_AND_ADS, cmp_id=300, vendor_list_version=88, policy_version=4)
    apply(shop, text)
    key = shop.get("/v1/keys/signing").get_json()["public_key"]
    for purpose in states(shop).values():
        receipt = purpose["history"][0]["receipt"]
        assert receipt["payload"]["source"] == "tcf"
        assert receipt["payload"]["tcf"] == {
            "cmp_id": 300,
            "vendor_list_version": 88,
            "policy_version": 4,
            "last_updated": purpose["history"][0]["receipt"]["payload"]["tcf"]["last_updated"],
            "sha256": tc_string_digest(text),
        }
        assert verify_signature(key, receipt["signature"], canonical_json(receipt["payload"]))
        tampered = {**receipt["payload"], "tcf": {**receipt["payload"]["tcf"], "cmp_id": 1}}
        assert not verify_signature(key, receipt["signature"], canonical_json(tampered))


def test_other_receipts_keep_their_shape(shop: Caller) -> None:
    body = {"granted": True, "source": "web_banner", "notice_version": "2026-01"}
    assert shop.put(f"{PATH}/recommendations", body).status_code == 200
    payload = states(shop)["recommendations"]["history"][0]["receipt"]["payload"]
    assert "tcf" not in payload


def test_each_change_is_audited_with_the_digest_and_the_channel(app: Flask, shop: Caller) -> None:
    text = signal(**CONTENT_AND_ADS)
    body = apply(shop, text, source="web_cmp")
    with app.app_context(), database.connection_context():
        entries = list(AuditEntry.select().order_by(AuditEntry.seq))
    assert [(e.action, e.purpose) for e in entries] == [
        ("consent.grant", "recommendations"),
        ("consent.grant", "ads_personalization"),
    ]
    receipts = {p["purpose"]: p["receipt_id"] for p in body["purposes"]}
    for entry in entries:
        fields = json.loads(entry.fields)
        assert fields["receipt_id"] == receipts[entry.purpose]
        assert (fields["source"], fields["channel"]) == ("tcf", "web_cmp")
        assert fields["tcf_sha256"] == tc_string_digest(text)
    assert verify_audit(app).ok


def test_the_string_itself_is_kept_nowhere(app: Flask, shop: Caller, admin: Caller) -> None:
    """Neither in any table of the database nor in the audit export: only its digest."""
    text = signal(**CONTENT_AND_ADS)
    apply(shop, text, source="web_cmp")
    body = {**personalize_body(), "tcf": signal(purpose_consents=[], last_updated=ago(minutes=1))}
    assert shop.post("/v1/personalize", body).status_code == 200
    core = text.split(".")[0]
    with app.app_context(), database.connection_context():
        tables = database.get_tables()
        dumped = "".join(
            json.dumps(database.execute_sql(f"SELECT * FROM {t}").fetchall(), default=str)
            for t in tables
        )
    assert tc_string_digest(text) in dumped  # what is kept instead: shows the search works
    assert core not in dumped and core[:24] not in dumped
    export = admin.get("/v1/audit/export?format=jsonl").get_data(as_text=True)
    assert tc_string_digest(text) in export and core[:24] not in export


# -- the rules through HTTP --------------------------------------------------------------------


def test_the_same_string_twice_records_nothing_new(app: Flask, shop: Caller) -> None:
    text = signal(**CONTENT_AND_ADS)
    apply(shop, text)
    before = stored(app)
    assert results(apply(shop, text)) == {
        "recommendations": ("unchanged", None),
        "ads_personalization": ("unchanged", None),
    }
    assert stored(app) == before == (2, 2)


def test_a_newer_choice_of_another_source_wins_over_an_older_string(shop: Caller) -> None:
    refusal = {"granted": False, "source": "web_banner", "notice_version": "2026-01"}
    assert shop.put(f"{PATH}/recommendations", refusal).status_code == 200
    body = apply(shop, signal(**CONTENT_AND_ADS, last_updated=ago(minutes=10)))
    assert results(body) == {
        "recommendations": ("ignored", "stale"),
        "ads_personalization": ("granted", None),
    }
    assert states(shop)["recommendations"]["state"] == "withdrawn"


def test_a_string_newer_than_the_choice_of_another_source_applies(shop: Caller) -> None:
    refusal = {"granted": False, "source": "web_banner", "notice_version": "2026-01"}
    assert shop.put(f"{PATH}/recommendations", refusal).status_code == 200
    body = apply(shop, signal(**CONTENT_AND_ADS, last_updated=ago(seconds=-60)))
    assert results(body)["recommendations"] == ("granted", None)
    assert states(shop)["recommendations"]["state"] == "granted"


def test_an_older_string_never_overrides_a_newer_one(shop: Caller) -> None:
    apply(shop, signal(purpose_consents=[], vendor_consents=[755], last_updated=ago(hours=1)))
    body = apply(shop, signal(**CONTENT_AND_ADS, last_updated=ago(hours=2)))
    assert set(results(body).values()) == {("ignored", "stale")}
    assert {p["state"] for p in states(shop).values() if p["purpose"] != "email_marketing"} == {
        "withdrawn"
    }


def test_a_later_string_changes_what_an_earlier_one_said(shop: Caller) -> None:
    apply(shop, signal(**CONTENT_AND_ADS, last_updated=ago(hours=2)))
    body = apply(shop, signal(purpose_consents=[5, 6], vendor_consents=[755]))
    assert results(body) == {
        "recommendations": ("unchanged", None),
        "ads_personalization": ("withdrawn", None),
    }
    history = states(shop)["ads_personalization"]["history"]
    assert [h["granted"] for h in history] == [False, True]  # newest first


def test_an_undisclosed_vendor_changes_nothing(app: Flask, shop: Caller) -> None:
    body = apply(shop, signal(**CONTENT_AND_ADS, disclosed_vendors=[10, 754]))
    assert set(results(body).values()) == {("ignored", "vendor_not_disclosed")}
    assert stored(app) == (0, 0)


def test_a_client_applies_the_string_only_to_its_own_purposes(
    app: Flask, new_caller: Callable[..., Caller], mailer: Caller
) -> None:
    content_only = new_caller("app", ("recommendations", "email_marketing"))
    assert results(apply(content_only, signal(**CONTENT_AND_ADS))) == {
        "recommendations": ("granted", None)
    }
    assert apply(mailer, signal(**CONTENT_AND_ADS))["purposes"] == []  # no mapped purpose
    assert stored(app) == (1, 1)


def test_an_auditor_may_not_apply_a_string(app: Flask, auditor: Caller) -> None:
    assert auditor.put(PATH, {"tcf": signal(**CONTENT_AND_ADS)}).status_code == 403
    assert stored(app) == (0, 0)


# -- legitimate interest and publisher mode ----------------------------------------------------


@pytest.fixture
def li_documents(documents: tuple[Path, Path]) -> tuple[Path, Path]:
    """email_marketing (legitimate interest) mapped to TCF purposes 2 and 7."""
    replace_in(
        documents[0] / "purposes.yaml",
        "    # no tcf_purposes",
        "    tcf_purposes: [2, 7]\n    # no tcf_purposes",
    )
    return documents


def test_a_legitimate_interest_purpose_is_objected_to_and_unobjected(
    li_documents: tuple[Path, Path], make_app: Callable[..., Flask]
) -> None:
    app = make_app()
    mailer = caller_of(app, "app", ("email_marketing",))
    objection = signal(purpose_li_transparency=[2], vendor_li=[755], last_updated=ago(hours=2))
    assert results(apply(mailer, objection)) == {"email_marketing": ("withdrawn", None)}
    state = states(mailer)["email_marketing"]
    assert (state["state"], state["lawful"], state["reason"]) == ("withdrawn", False, "objection")

    restricted = signal(
        purpose_li_transparency=[2, 7],
        vendor_li=[755],
        publisher_restrictions=[(7, 1, [755])],  # the publisher requires consent for 7
        last_updated=ago(hours=1, minutes=30),
    )
    assert results(apply(mailer, restricted)) == {"email_marketing": ("unchanged", None)}

    no_objection = signal(purpose_li_transparency=[2, 7], vendor_li=[755])
    assert results(apply(mailer, no_objection)) == {"email_marketing": ("granted", None)}
    assert states(mailer)["email_marketing"]["lawful"] is True


def test_publisher_mode_reads_the_publisher_segment(
    documents: tuple[Path, Path], make_app: Callable[..., Flask]
) -> None:
    (documents[0] / "tcf.yaml").write_text("tcf: {}\n", encoding="utf-8")
    app = make_app()
    admin = caller_of(app)
    without = apply(admin, signal(**CONTENT_AND_ADS, last_updated=ago(hours=2)))
    assert set(results(without).values()) == {("ignored", "no_publisher_segment")}
    assert stored(app) == (0, 0)
    # the core segment refuses everything: only the publisher's own segment is read
    body = apply(admin, signal(publisher={"consents": [5, 6]}, disclosed_vendors=[1]))
    assert results(body) == {
        "recommendations": ("granted", None),
        "ads_personalization": ("withdrawn", None),
    }


# -- refusals ----------------------------------------------------------------------------------


def refused(caller: Caller, text: str) -> dict[str, Any]:
    response = caller.put(PATH, {"tcf": text, "source": "web_cmp"})
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    problem: dict[str, Any] = response.get_json()
    assert list(problem["errors"]) == ["tcf"] and problem["errors"]["tcf"]
    return problem


BAD_STRINGS = {
    TCStringErrorCode.NOT_BASE64URL: lambda: "CQt+4cA",
    TCStringErrorCode.TRUNCATED: lambda: signal()[:30],
    TCStringErrorCode.UNSUPPORTED_VERSION: lambda: signal(version=1),
    TCStringErrorCode.POLICY_VERSION_TOO_OLD: lambda: signal(policy_version=3),
    TCStringErrorCode.LAST_UPDATED_IN_FUTURE: lambda: signal(last_updated=ago(minutes=-6)),
    TCStringErrorCode.DISCLOSED_VENDORS_MISSING: lambda: signal(disclosed_vendors=None),
    TCStringErrorCode.UNKNOWN_SEGMENT_TYPE: lambda: signal() + ".4AAA",
    TCStringErrorCode.DUPLICATE_SEGMENT: lambda: signal() + "." + signal().split(".")[1],
}


@pytest.mark.parametrize("code", list(BAD_STRINGS), ids=str)
def test_a_bad_string_is_a_422_naming_tcf_with_its_code_and_records_nothing(
    app: Flask, shop: Caller, code: TCStringErrorCode
) -> None:
    assert refused(shop, BAD_STRINGS[code]())["code"] == code.value
    body = {**personalize_body(), "tcf": BAD_STRINGS[code]()}
    response = shop.post("/v1/personalize", body)
    assert (response.status_code, response.get_json()["code"]) == (422, code.value)
    assert stored(app) == (0, 0)


def test_without_a_tcf_map_a_string_is_refused(
    documents: tuple[Path, Path], make_app: Callable[..., Flask]
) -> None:
    (documents[0] / "tcf.yaml").unlink()
    for mapping in ("    tcf_purposes: [5, 6]\n", "    tcf_purposes: [3, 4]\n"):
        replace_in(documents[0] / "purposes.yaml", mapping, "")
    app = make_app()
    problem = refused(caller_of(app), signal(**CONTENT_AND_ADS))
    assert problem["code"] == "tcf_not_configured"
    assert stored(app) == (0, 0)


def test_unknown_fields_and_missing_strings_are_named(shop: Caller) -> None:
    for body, field in (({}, "tcf"), ({"tcf": "x", "granted": True}, "granted")):
        response = shop.put(PATH, body)
        assert response.status_code == 422
        assert field in response.get_json()["errors"]


FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    text=st.text(alphabet=ALPHABET + ".", min_size=1, max_size=120)
    | st.text(min_size=1, max_size=40),
    cut=st.integers(1, 200),
)
def test_any_string_is_applied_or_refused_never_a_5xx(
    app: Flask, admin: Caller, text: str, cut: int
) -> None:
    for candidate in (text, signal(**CONTENT_AND_ADS)[:cut]):
        before = stored(app)
        response = admin.put(PATH, {"tcf": candidate})
        assert response.status_code in (200, 422), response.get_data(as_text=True)
        if response.status_code == 422:
            assert "tcf" in response.get_json()["errors"]
            assert stored(app) == before


# -- personalize -------------------------------------------------------------------------------


def personalize_body() -> dict[str, Any]:
    return {
        "subject_id": SUBJECT,
        "purpose": "recommendations",
        "candidates": [{"id": "sku-1", "category": "shoes"}, {"id": "sku-2", "category": "books"}],
    }


def test_personalize_applies_the_string_before_deciding(app: Flask, shop: Caller) -> None:
    refused_first = shop.post("/v1/personalize", personalize_body()).get_json()
    assert refused_first["outcome"] == "fallback" and "tcf" not in refused_first
    text = signal(**CONTENT_AND_ADS)
    decided = shop.post("/v1/personalize", {**personalize_body(), "tcf": text}).get_json()
    assert (decided["outcome"], decided["reasons"]) == ("allow", ["consent_granted"])
    assert {p["purpose"]: p["result"] for p in decided["tcf"]} == {
        "recommendations": "granted",
        "ads_personalization": "granted",
    }
    records = stored(app)[0]
    again = shop.post("/v1/personalize", {**personalize_body(), "tcf": text}).get_json()
    assert again["outcome"] == "allow"
    assert {p["result"] for p in again["tcf"]} == {"unchanged"}
    assert stored(app)[0] == records == 2


def test_personalize_with_a_withdrawing_string_falls_back(shop: Caller) -> None:
    apply(shop, signal(**CONTENT_AND_ADS, last_updated=ago(hours=2)))
    text = signal(purpose_consents=[1], vendor_consents=[755])
    decided = shop.post("/v1/personalize", {**personalize_body(), "tcf": text}).get_json()
    assert (decided["outcome"], decided["reasons"]) == ("fallback", ["consent_withdrawn"])


def test_the_policies_show_the_tcf_map_and_each_mapping(auditor: Caller) -> None:
    body = auditor.get("/v1/policies").get_json()
    assert body["tcf"] == {"vendor_id": 755}
    mapped = {k: v.get("tcf_purposes") for k, v in body["purposes"].items()}
    assert mapped == {
        "recommendations": [5, 6],
        "ads_personalization": [3, 4],
        "email_marketing": None,
    }


def test_the_access_export_carries_tcf_receipts_that_verify(shop: Caller, admin: Caller) -> None:
    text = signal(**CONTENT_AND_ADS)
    apply(shop, text)
    exported = admin.get(f"/v1/subjects/{SUBJECT}/export").get_json()
    key = admin.get("/v1/keys/signing").get_json()["public_key"]
    receipts = [consent["receipt"] for consent in exported["consents"]]
    assert len(receipts) == 2
    for receipt in receipts:
        assert receipt["payload"]["tcf"]["sha256"] == tc_string_digest(text)
        assert verify_signature(key, receipt["signature"], canonical_json(receipt["payload"]))


def test_a_string_whose_audit_cannot_be_written_records_nothing(app: Flask, shop: Caller) -> None:
    """Fail closed, as every consent change: no record without its audit entry."""
    text = signal(**CONTENT_AND_ADS)
    with audit_down(app):
        assert_audit_unavailable(shop.put(PATH, {"tcf": text}))
        assert_audit_unavailable(shop.post("/v1/personalize", {**personalize_body(), "tcf": text}))
    assert stored(app) == (0, 0)
    assert set(results(apply(shop, text)).values()) == {("granted", None)}


def test_the_same_string_sent_at_once_by_many_callers_is_recorded_once(app: Flask) -> None:
    """Workers of a real server apply it concurrently: each purpose is changed once, under
    the subject's lock, and every other request finds it unchanged."""
    with app.app_context(), database.connection_context():
        _, key = create_client("burst", Role.ADMIN, [], datetime.now(UTC))
    text = signal(**CONTENT_AND_ADS)
    answers: list[tuple[int, Any]] = []
    env = gateway_environment(app, RATELIMIT_DEFAULT="100000 per minute")
    with running_server(app, 3, env) as (base, _process):

        def send() -> None:
            request = urllib.request.Request(
                base + PATH, data=json.dumps({"tcf": text}).encode(), method="PUT"
            )
            request.add_header("Authorization", f"Bearer {key}")
            request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append((response.status, json.loads(response.read())))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [status for status, _ in answers] == [200] * 8
    granted = [
        p["purpose"] for _, body in answers for p in body["purposes"] if p["result"] == "granted"
    ]
    assert sorted(granted) == ["ads_personalization", "recommendations"]
    with app.app_context(), database.connection_context():
        changes = AuditEntry.select().where(AuditEntry.action.startswith("consent."))
        assert (ConsentRecord.select().count(), changes.count()) == (2, 2)
